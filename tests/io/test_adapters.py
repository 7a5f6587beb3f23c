"""LoRA adapter directory vs its base: drift from scale·B·A, CKA with the adapter applied (issue 12)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert

import layerprobe as lp
from layerprobe.io.adapters import lora_update_norm, read_adapter

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("lora")
    base = tiny_bert(0)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    torch.manual_seed(1)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False,
                          layers_to_transform=[2, 3])
    pm = peft.get_peft_model(tiny_bert(0), cfg)
    pm.save_pretrained(root / "adapter")
    return root / "base", root / "adapter", pm


def test_weights_only_drift_is_the_low_rank_update(adapter):
    base_dir, adapter_dir, _ = adapter
    c = lp.compare(str(base_dir), str(adapter_dir))
    drift = {e["name"]: e["weight_drift"] for e in c.blocks}
    assert drift["block.0"] == drift["block.1"] == drift["embeddings"] == 0.0
    _, mods = read_adapter(adapter_dir)
    base = tiny_bert(0)
    for i in (2, 3):
        layer = base.encoder.layer[i]
        upd = math.sqrt(sum(lora_update_norm(m["A"], m["B"], m["scale"]) ** 2
                            for name, m in mods.items() if f"layer.{i}." in name))
        w0 = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in layer.parameters()))
        assert drift[f"block.{i}"] == pytest.approx(upd / w0, rel=1e-5)
    assert c.meta["adapter"]["b"]["modules"] == 4 and c.meta["adapter"]["b"]["kind"] == "lora"


def test_cka_with_adapter_applied_matches_the_merged_model(adapter, texts, tokenizer):
    base_dir, adapter_dir, pm = adapter
    c = lp.compare(str(base_dir), str(adapter_dir), probe=texts[:16], probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    merged = pm.merge_and_unload()
    ref = lp.compare(tiny_bert(0), merged, texts[:16], tokenizer, probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    for e, r in zip(c.blocks, ref.blocks):
        assert e["cka"] == pytest.approx(r["cka"], abs=1e-6)
        assert e["weight_drift"] == pytest.approx(r["weight_drift"], rel=1e-5, abs=1e-12)
    assert c.blocks[1]["cka"] > 1 - 1e-6 and c.blocks[4]["cka"] < 0.9999


def test_snapshot_of_a_peft_model_has_plain_names(adapter, texts, tokenizer):
    _, _, pm = adapter
    s = lp.take_snapshot(pm, tokenizer, texts[:8], progress=False)
    plain = lp.take_snapshot(tiny_bert(0), tokenizer, texts[:8], progress=False)
    assert {g: sorted(w) for g, w in s.weights.items()} == {g: sorted(w) for g, w in plain.weights.items()}


def test_lora_update_norm_reference():
    a, b = torch.randn(3, 7, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert lora_update_norm(a, b, 2.0) == pytest.approx(float(torch.linalg.norm(2.0 * b @ a)), rel=1e-12)


def test_adapter_tokenizer_larger_than_the_base_embeddings_is_refused_in_one_line(adapter, tmp_path, capsys):
    """The adapter directory's own tokenizer goes through the one checked loader (it used to be read
    directly, and ids past the base model's 64-row embedding table crashed with IndexError)."""
    import shutil

    from transformers import BertTokenizerFast

    from conftest import WORDS
    from layerprobe.cli import main

    base_dir, adapter_dir, _ = adapter
    own = tmp_path / "adapter"
    shutil.copytree(adapter_dir, own)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"x{i}" for i in range(70)), *WORDS]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(own)
    probe = tmp_path / "p.txt"
    probe.write_text("good movie\na very long plot\n")
    expected = f"the tokenizer has {len(vocab)} tokens but the model's embedding table has 64 rows"
    with pytest.raises(lp.LayerProbeError, match=expected):
        lp.compare(str(base_dir), str(own), probe=str(probe))
    rc = main(["compare", str(base_dir), str(own), "--probe", str(probe), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and expected in err and str(own) in err
