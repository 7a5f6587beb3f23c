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


# -- issue 19 item 1: a task adapter (TaskType.SEQ_CLS) over a bare-encoder base ---------------------


@pytest.fixture(scope="module")
def task_adapter(tmp_path_factory, tokenizer):
    """A SEQ_CLS LoRA adapter (keys ``base_model.model.bert.encoder...``, head in modules_to_save)
    whose base directory holds the bare encoder, as a user fine-tuning MiniLM would have."""
    root = tmp_path_factory.mktemp("lora_cls")
    tiny_bert(0).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    torch.manual_seed(1)
    cfg = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=["query", "value"],
                          init_lora_weights=False)
    pm = peft.get_peft_model(tiny_bert(0, head=True), cfg)
    with torch.no_grad():  # the head was trained too
        pm.base_model.model.classifier.modules_to_save["default"].weight.add_(0.5)
    pm.save_pretrained(root / "adapter")
    return root / "base", root / "adapter", pm


def test_task_adapter_with_probe_is_the_merged_model(task_adapter, texts, tokenizer):
    base_dir, adapter_dir, pm = task_adapter
    c = lp.compare(str(base_dir), str(adapter_dir), probe=texts[:16], probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    weights_only = lp.compare(str(base_dir), str(adapter_dir))
    merged = pm.merge_and_unload()
    ref = lp.compare(tiny_bert(0), merged, texts[:16], tokenizer, probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    for e, r, w in zip(c.blocks, ref.blocks, weights_only.blocks):
        assert e["cka"] == pytest.approx(r["cka"], abs=1e-6)
        assert e["weight_drift"] == pytest.approx(w["weight_drift"], rel=1e-5)
    assert [e["weight_drift"] > 0.1 for e in c.blocks] == [False, True, True, True, True]
    assert min(e["cka"] for e in c.blocks[1:]) < 0.9995  # before: every block 1.0000 / drift 0
    info = c.meta["adapter"]["b"]
    assert info["task_type"] == "SEQ_CLS"
    assert info["applied_update_norm"] == pytest.approx(info["update_norm"], rel=1e-6) and info["update_norm"] > 1
    assert info["modules_to_save"] == {"classifier": {"n_params": 66, "in_base": False, "weight_drift": None}}
    assert any("adapter head classifier (66 parameters" in n and "not in the base" in n for n in c.recommendation.notes)


def test_task_adapter_head_is_compared_when_the_base_has_one(tmp_path, task_adapter, texts, tokenizer):
    _, adapter_dir, _ = task_adapter
    base = tiny_bert(0, head=True)
    base.save_pretrained(tmp_path / "base_cls")
    tokenizer.save_pretrained(tmp_path / "base_cls")
    c = lp.compare(str(tmp_path / "base_cls"), str(adapter_dir))
    head = c.meta["adapter"]["b"]["modules_to_save"]["classifier"]
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))["base_model.model.classifier.weight"].double()
    w0 = base.classifier.weight.detach().double()
    b0 = base.classifier.bias.detach().double()
    sb = load_file(str(adapter_dir / "adapter_model.safetensors"))["base_model.model.classifier.bias"].double()
    want = math.sqrt(float((saved - w0).pow(2).sum() + (sb - b0).pow(2).sum()) / float(w0.pow(2).sum() + b0.pow(2).sum()))
    assert head["in_base"] and head["weight_drift"] == pytest.approx(want, rel=1e-9)
    assert c.other["weight_drift"] > 0  # the saved head is served in place of the base's


def test_adapter_keys_that_fit_no_base_class_are_one_line_exit_2(tmp_path, task_adapter, texts, capsys):
    from safetensors.torch import load_file, save_file

    from layerprobe.cli import main

    base_dir, adapter_dir, _ = task_adapter
    bad = tmp_path / "bad_adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    save_file({k.replace(".bert.", ".roberta."): v for k, v in sd.items()}, str(bad / "adapter_model.safetensors"))
    probe = tmp_path / "p.txt"
    probe.write_text("\n".join(texts[:8]) + "\n")
    assert main(["compare", str(base_dir), str(bad), "--probe", str(probe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter module(s) are not in the base model" in err
    assert "BertForSequenceClassification, loaded for task_type SEQ_CLS" in err


def test_adapter_key_peft_would_not_load_is_an_error(tmp_path, task_adapter, texts):
    """A LoRA pair for a module outside target_modules: peft drops it without a word."""
    from safetensors.torch import load_file, save_file

    base_dir, adapter_dir, _ = task_adapter
    bad = tmp_path / "extra_key"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    q = "base_model.model.bert.encoder.layer.0.attention.self.query"
    k = q.replace(".query", ".key")
    sd[k + ".lora_A.weight"], sd[k + ".lora_B.weight"] = sd[q + ".lora_A.weight"].clone(), sd[q + ".lora_B.weight"].clone()
    save_file(sd, str(bad / "adapter_model.safetensors"))
    # refused where the adapter is read (with or without a probe), before peft could drop it
    match = (r"extra_key/adapter_config.json: LoRA module 'bert.encoder.layer.0.attention.self.key' is in the "
             r"weights but not in the config's target_modules")
    with pytest.raises(lp.LayerProbeError, match=match):
        lp.compare(str(base_dir), str(bad), probe=texts[:8], probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    with pytest.raises(lp.LayerProbeError, match=match):
        lp.compare(str(base_dir), str(bad))


def test_adapter_with_an_update_but_no_drift_is_refused():
    from layerprobe.comparison.compare import _adapter_notes

    entries = [{"name": "block.0", "weight_drift": 0.0}, {"name": "block.1", "weight_drift": 0.0}]
    with pytest.raises(lp.LayerProbeError, match="update norm is 1.8 but no compared weight changed"):
        _adapter_notes({"update_norm": 1.8}, entries, {"weight_drift": 0.0}, [], "adapter")
    notes: list[str] = []
    _adapter_notes({"update_norm": 0.0}, entries, None, notes, "adapter")  # a zero adapter is fine
    assert notes == []
