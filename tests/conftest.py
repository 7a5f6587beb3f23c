"""Shared fixtures: tiny seeded random models and a tiny offline tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

WORDS = (
    "the a movie film was is great good bad awful boring fun plot actor story and but not very "
    "too long short funny sad best worst ever i it this that of to in with"
).split()


def make_tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok("good movie")["input_ids"][1] != tok.unk_token_id
    return tok


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return make_tokenizer()


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                vocab_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1)
    base.update(kw)
    return BertConfig(**base)


def tiny_bert(seed: int = 0, head: bool = False, **kw):
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cls = BertForSequenceClassification if head else BertModel
    return cls(tiny_bert_config(**kw)).eval()


@pytest.fixture
def bert():
    return tiny_bert(0)


@pytest.fixture(scope="session")
def texts():
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(48)]


# --------------------------------------------------------------- hostile-input fixtures (tests/hostile.py)


def _hostile_root(root, tokenizer, texts, snapshot_args=(), compare_args=()) -> dict:
    """A tiny model directory with its tokenizer, a probe of ``texts``, two snapshots and their comparison."""
    from layerprobe.cli import main

    good = root / "good"
    tiny_bert(0, head=True).save_pretrained(good)
    tokenizer.save_pretrained(good)
    probe = root / "probe.txt"
    probe.write_text("\n".join(texts) + "\n")
    for name in ("a", "b"):
        assert main(["snapshot", str(good), "--probe", str(probe), "-o", str(root / f"snap_{name}.pt"), "--quiet",
                     *snapshot_args]) == 0
    assert main(["compare", str(root / "snap_a.pt"), str(root / "snap_b.pt"), "--out", str(root / "cmp"),
                 "--quiet", *compare_args]) == 0
    return {"root": root, "good": good, "probe": probe, "marker": root / "PWNED",
            "snap": root / "snap_a.pt", "snap_b": root / "snap_b.pt", "cmp": root / "cmp" / "comparison.json"}


@pytest.fixture(scope="session")
def f2(tmp_path_factory, tokenizer, texts):
    """A tiny model directory with its tokenizer, a 48-text probe, two snapshots and a comparison."""
    return _hostile_root(tmp_path_factory.mktemp("hostile"), tokenizer, texts)


@pytest.fixture(scope="session")
def f3(tmp_path_factory, tokenizer, texts):
    """As ``f2`` with a 16-text probe (max length 16), plus two safetensors files of a tiny BERT."""
    from safetensors.torch import save_file

    out = _hostile_root(tmp_path_factory.mktemp("hostile3"), tokenizer, texts[:16], ("--max-length", "16"),
                        ("--no-ci",))
    root = out["root"]
    sd = {k: v.detach().clone().contiguous() for k, v in tiny_bert(0).state_dict().items()}
    save_file(sd, str(root / "a.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in sd.items()}, str(root / "b.safetensors"))
    return {**out, "a": root / "a.safetensors", "b": root / "b.safetensors"}


@pytest.fixture(autouse=True)
def shipped_default_rule(request, monkeypatch):
    """Pin what decides the advice without a tolerance, which the freeze study's refits of the shipped
    ``predictor.json`` flip (``default_rule``): the CKA rule unless a test is marked
    ``@pytest.mark.shipped_default("predictor")``; ``@pytest.mark.shipped_default(None)`` reads the file as
    shipped. In-process only: a subprocess (CLI run, torchrun) reads the file."""
    marker = request.node.get_closest_marker("shipped_default")
    rule = marker.args[0] if marker else "cka"
    if rule is None:
        yield
        return
    pin_default_rule(monkeypatch, rule)
    yield


def pin_default_rule(monkeypatch, rule: str) -> None:
    """``shipped_meta()`` as shipped but with ``default_rule`` = ``rule`` (for fixtures wider than a test:
    ``with pytest.MonkeyPatch.context() as mp: pin_default_rule(mp, "cka")``)."""
    from layerprobe.freezing import predict as pr

    real = pr.shipped_meta
    monkeypatch.setattr(pr, "shipped_meta", lambda: {**real(), "default_rule": rule})
