"""The Python API's argument boundary: a wrong argument is a LayerProbeError naming it — a TypeError
subclass (LayerProbeTypeError) for a wrong type, a ValueError for a wrong value — never a bare Python
error from deep inside (ValueError from the tokenizer, AttributeError, RuntimeError from torch)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

from layerprobe import compare, freeze, recommend, take_snapshot
from layerprobe.errors import LayerProbeError, LayerProbeTypeError
from layerprobe.tracking.tracker import Tracker


def meta_bert():
    from transformers import BertModel

    with torch.device("meta"):
        return BertModel(tiny_bert(0).config)


TEXT_TYPES = {  # texts of the wrong type, and the words the message must hold
    "one_string": ("good movie bad film", "got one str"),
    "bytes": (b"good movie", "got one bytes"),
    "token_ids": ([[101, 2, 3], [101, 4]], "texts[0] is list"),
    "int_ids": ([101, 2, 3], "texts[0] is int"),
    "none_among": (["good movie", None, "bad film"], "texts[1] is NoneType"),
    "number": (5, "got int"),
    "dict": ({"text": "good"}, "got dict"),
}


@pytest.mark.parametrize("entry,case", [(e, c) for e in ("take_snapshot", "Tracker", "compare") for c in sorted(TEXT_TYPES)
                                        if (e, c) != ("compare", "one_string")])  # compare's probe may be a path
def test_texts_of_the_wrong_type(tokenizer, case, entry):
    texts, needle = TEXT_TYPES[case]
    m = tiny_bert(0)
    with pytest.raises(LayerProbeTypeError) as e:
        if entry == "take_snapshot":
            take_snapshot(m, tokenizer, texts, progress=False)
        elif entry == "Tracker":
            Tracker(m, tokenizer, texts)
        else:
            compare(m, m, texts, tokenizer=tokenizer)
    assert isinstance(e.value, TypeError) and isinstance(e.value, LayerProbeError)
    assert needle.split(" ", 1)[1] in str(e.value) and ("texts" in str(e.value) or "probe" in str(e.value))


@pytest.mark.parametrize("texts", [["", " ", "\t"], ["\n"] * 5, []])
def test_blank_or_empty_texts(tokenizer, texts):
    with pytest.raises(LayerProbeError, match="empty") as e:
        take_snapshot(tiny_bert(0), tokenizer, texts, progress=False)
    assert not isinstance(e.value, TypeError)


@pytest.mark.parametrize("kw,name", [({"max_length": 0}, "max_length"), ({"max_length": -3}, "max_length"),
                                     ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
                                     ({"pooling": "tokens", "max_tokens": -1}, "max_tokens"),
                                     ({"pooling": "tokens", "max_tokens": 0}, "max_tokens"),
                                     ({"max_length": True}, "max_length"), ({"pooling": "median"}, "pooling")])
def test_probe_settings_out_of_range(tokenizer, texts, kw, name):
    with pytest.raises(LayerProbeError, match=name) as e:
        take_snapshot(tiny_bert(0), tokenizer, texts[:6], progress=False, **kw)
    assert type(e.value) is LayerProbeError  # a ValueError


@pytest.mark.parametrize("a,b,arg", [("TOK", "M", "a"), ("M", None, "b"), (3.5, "M", "a"), ("M", ["x"], "b")])
def test_compare_sides_of_the_wrong_type(tokenizer, a, b, arg):
    m = tiny_bert(0)
    objs = {"TOK": tokenizer, "M": m}
    with pytest.raises(LayerProbeTypeError, match=rf"compare: {arg} \(the (base|tuned) side\)"):
        compare(objs.get(a, a) if isinstance(a, str) else a, objs.get(b, b) if isinstance(b, str) else b)


@pytest.mark.parametrize("model,names,needle", [(None, ["embeddings"], "model must be a torch.nn.Module"),
                                                ("m", None, "names must be a list"),
                                                ("m", "block.0", "got one str"),
                                                ("m", [0, 1], "found int"),
                                                ("path/to/model", ["embeddings"], "model must be")])
def test_freeze_arguments(model, names, needle):
    m = tiny_bert(0)
    with pytest.raises(LayerProbeTypeError, match=needle):
        freeze(m if model == "m" else model, names)
    assert all(p.requires_grad for p in m.parameters())


def test_freeze_takes_a_recommendation(tokenizer, texts):
    m = tiny_bert(0)
    r = compare(m, m, texts[:8], tokenizer=tokenizer).recommendation
    n = freeze(m, r)
    assert r.freeze and n == sum(p.numel() for name, p in m.named_parameters() if p.requires_grad)
    assert not m.embeddings.word_embeddings.weight.requires_grad


@pytest.mark.parametrize("x", [5, 2.0, None, b"{}"])
def test_recommend_needs_a_comparison(x):
    with pytest.raises(LayerProbeTypeError, match="expected a comparison"):
        recommend(x)


def test_a_model_on_the_meta_device_cannot_run_the_probe(tokenizer, texts):
    with pytest.raises(LayerProbeError, match="meta device"):
        take_snapshot(meta_bert(), tokenizer, texts[:6], progress=False)
    s = take_snapshot(meta_bert(), tokenizer, None, progress=False)  # no texts: a weights-free snapshot
    assert not s.has_representations and not s.weights


def test_the_error_classes():
    assert issubclass(LayerProbeTypeError, LayerProbeError) and issubclass(LayerProbeTypeError, TypeError)
    assert issubclass(LayerProbeError, ValueError) and not issubclass(LayerProbeError, TypeError)
