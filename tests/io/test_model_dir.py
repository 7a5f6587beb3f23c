"""Real checkpoints: old files with buffers, heads/poolers only where they are in the files (issue 12)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_bert
from safetensors.torch import load_file, save_file

from layerprobe.options import ProbeOptions
from layerprobe import compare
from layerprobe.cli import main
from layerprobe.io.model_dir import drop_non_parameters


@pytest.fixture(scope="module")
def old_pair(tmp_path_factory, tokenizer):
    """A base saved the old way (``embeddings.position_ids`` buffer in the file) and its fine-tune saved the new way."""
    root = tmp_path_factory.mktemp("old")
    base, tuned = tiny_bert(0), tiny_bert(0)
    with torch.no_grad():
        for p in tuned.encoder.layer[2].parameters():
            p.add_(0.1 * torch.randn_like(p))
    for name, m in (("base", base), ("tuned", tuned)):
        m.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    sd = load_file(root / "base" / "model.safetensors")
    assert "embeddings.position_ids" not in sd
    sd["embeddings.position_ids"] = torch.arange(64)[None]  # what transformers < 4.31 saved
    save_file(sd, root / "base" / "model.safetensors", metadata={"format": "pt"})
    return root / "base", root / "tuned"


def test_old_checkpoint_with_buffer_compares_weights_only(old_pair, capsys):
    assert main(["compare", str(old_pair[0]), str(old_pair[1]), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    drift = {e["name"]: e["weight_drift"] for e in doc["blocks"]}
    assert drift["block.2"] > 0.01 and drift["block.0"] == 0.0 and drift["embeddings"] == 0.0


def test_old_checkpoint_with_probe(old_pair, texts):
    c = compare(str(old_pair[0]), str(old_pair[1]), probe=texts[:16], probe_options=ProbeOptions(max_length=16))
    cka = {e["name"]: e["cka"] for e in c.blocks}
    assert cka["block.1"] == pytest.approx(1.0, abs=1e-6) and cka["block.3"] < 0.9999


def test_buffers_dropped_by_dtype_without_a_config():
    keep, dropped = drop_non_parameters(["a.position_ids", "a.w", "a.mask"],
                                        {"a.position_ids": torch.int64, "a.w": torch.float16,
                                         "a.mask": torch.bool}, None)
    assert keep == ["a.w"] and dropped == ["a.position_ids", "a.mask"]


def test_tied_alias_dropped_with_config(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32))
    m.save_pretrained(tmp_path)
    keys = ["transformer.wte.weight", "lm_head.weight", "transformer.h.0.attn.bias"]
    keep, dropped = drop_non_parameters(keys, dict.fromkeys(keys, torch.float32), str(tmp_path))
    assert keep == ["transformer.wte.weight"] and set(dropped) == {"lm_head.weight", "transformer.h.0.attn.bias"}


@pytest.fixture(scope="module")
def head_dirs(tmp_path_factory, tokenizer):
    """Two identical head models; one more saved without its pooler (AutoModel would invent one at random)."""
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    m = BertForSequenceClassification(tiny_bert_config())
    for name in ("a", "b", "no_pooler"):
        m.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if "pooler" not in k}
    save_file(sd, root / "no_pooler" / "model.safetensors", metadata={"format": "pt"})
    return root


def test_head_loaded_with_its_class_and_output_byte_identical(head_dirs, texts, tmp_path):
    outs = []
    for run in range(2):
        out = tmp_path / f"r{run}"
        assert main(["compare", str(head_dirs / "a"), str(head_dirs / "b"), "--probe", _probe(tmp_path, texts),
                     "--quiet", "--max-length", "16", "--out", str(out)]) == 0
        outs.append((out / "comparison.json").read_bytes())
    assert outs[0] == outs[1]  # byte-identical across runs
    doc = json.loads(outs[0])
    assert doc["meta"]["model_class"] == {"a": "BertForSequenceClassification", "b": "BertForSequenceClassification"}
    assert doc["other"]["weight_drift"] == 0.0 and doc["other"]["n_params_compared"] == 32 * 32 + 32 + 32 * 2 + 2
    assert all(e["cka"] == pytest.approx(1.0, abs=1e-6) for e in doc["blocks"])


def test_missing_pooler_is_never_measured_at_random(head_dirs, texts, tmp_path, capsys):
    assert main(["compare", str(head_dirs / "a"), str(head_dirs / "no_pooler"), "--probe", _probe(tmp_path, texts),
                 "--quiet"]) == 2
    assert "initialised at random" in capsys.readouterr().err


def _probe(tmp_path, texts) -> str:
    p = tmp_path / "probe.txt"
    p.write_text("\n".join(texts[:16]) + "\n")
    return str(p)
