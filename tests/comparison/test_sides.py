"""Sentence-transformers model directories and up-front input checks (issue 19 item 8)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import tiny_bert
import layerprobe as lp
from layerprobe.cli import main


def _st_dir(root, model, tokenizer):
    """The layout ``SentenceTransformer.save`` writes: modules.json, 0_Transformer/, 1_Pooling/."""
    root.mkdir()
    model.save_pretrained(root / "0_Transformer")
    tokenizer.save_pretrained(root / "0_Transformer")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                "pooling_mode_mean_tokens": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return root


def test_sentence_transformers_dirs_compare_like_their_transformer(tmp_path, tokenizer, texts):
    a = _st_dir(tmp_path / "st_a", tiny_bert(0), tokenizer)
    b = _st_dir(tmp_path / "st_b", tiny_bert(1), tokenizer)
    c = lp.compare(str(a), str(b), probe=texts[:12], probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    ref = lp.compare(str(a / "0_Transformer"), str(b / "0_Transformer"), probe=texts[:12], probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(ci=False))
    assert [e["cka"] for e in c.blocks] == pytest.approx([e["cka"] for e in ref.blocks], abs=1e-9)
    assert min(e["cka"] for e in c.blocks) < 0.99
    w = lp.compare(str(a), str(b))  # weights only
    assert w.blocks[1]["weight_drift"] == pytest.approx(ref.blocks[1]["weight_drift"], rel=1e-9)


def test_a_bad_second_input_is_refused_before_the_first_is_probed(tmp_path, tokenizer, texts, capsys):
    a = _st_dir(tmp_path / "st_a", tiny_bert(0), tokenizer)
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    (bad / "README.md").write_text("hello")
    probe = tmp_path / "p.txt"
    probe.write_text("\n".join(texts[:12]) + "\n")
    capsys.readouterr()  # the fixture's own save messages
    t0 = time.perf_counter()
    assert main(["compare", str(a), str(bad), "--probe", str(probe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "not_a_model" in err
    assert "batch/s" not in err  # no progress bar: side A never ran
    assert time.perf_counter() - t0 < 5


def test_modules_json_without_a_transformer_is_one_line(tmp_path, capsys):
    d = tmp_path / "st"
    d.mkdir()
    (d / "modules.json").write_text(json.dumps([{"idx": 0, "path": "1_Pooling",
                                                 "type": "sentence_transformers.models.Pooling"}]))
    assert main(["compare", str(d), str(d)]) == 2
    assert "lists no sentence_transformers.models.Transformer module" in capsys.readouterr().err


def test_a_failure_in_the_probe_pass_names_the_model_directory(tmp_path, tokenizer, texts):
    """Broken weights show only when the probe runs: the one-line error still says which input it was."""
    from layerprobe import compare
    from layerprobe.errors import LayerProbeError

    good, bad = tiny_bert(), tiny_bert()
    with torch.no_grad():
        bad.encoder.layer[0].output.dense.weight.fill_(float("nan"))
    for name, m in (("good", good), ("bad dir", bad)):
        m.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    with pytest.raises(LayerProbeError) as err:
        compare(str(tmp_path / "good"), str(tmp_path / "bad dir"), probe=texts, progress=False)
    assert err.value.path == str(tmp_path / "bad dir")
    assert "non-finite" in err.value.message and "block.0" in err.value.message
    assert "\n" not in str(err.value) and "snapshot written" not in str(err.value)


def test_fan_in_fan_out_on_linear_modules_is_ignored_as_peft_does(tmp_path):
    """peft turns fan_in_fan_out off for nn.Linear targets; weights-only, the update is laid out the same."""
    peft = pytest.importorskip("peft")
    from layerprobe import compare

    base = tiny_bert()
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    tuned = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["intermediate.dense"],
                                                             init_lora_weights=False))
    tuned.save_pretrained(tmp_path / "plain")
    cfg_path = tmp_path / "plain" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    (tmp_path / "fan").mkdir()
    for f in (tmp_path / "plain").iterdir():
        (tmp_path / "fan" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "fan" / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": True}))
    rows = {}
    for name in ("plain", "fan"):
        c = compare(str(tmp_path / "base"), str(tmp_path / name), progress=False)
        rows[name] = [(b["weight_drift"], b["weight_cosine"]) for b in c.blocks]
    assert rows["fan"] == rows["plain"] and rows["plain"][1][0] > 0
