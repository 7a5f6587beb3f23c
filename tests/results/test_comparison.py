"""What a notebook user sees: Comparison/Snapshot reprs, recommend() on a comparison; CLI overrides and dtypes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_bert

import layerprobe as lp
from layerprobe.cli import main


@pytest.fixture(scope="module")
def comparison(tokenizer, texts):
    tuned = tiny_bert(0)
    with torch.no_grad():
        for p in tuned.encoder.layer[3].parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn_like(p))
    return lp.compare(tiny_bert(0), tuned, texts[:24], tokenizer, probe_options=lp.ProbeOptions(max_length=16), cka_options=lp.CKAOptions(n_boot=50))


def test_comparison_reprs(comparison):
    text = repr(comparison)
    assert text.splitlines()[0].split()[:3] == ["entry", "CKA", "drift"] and "advice: freeze" in text
    assert len(text) < 4000
    html = comparison._repr_html_()
    assert html.startswith("<table>") and "<td>block.3</td>" in html and "advice:" in html


def test_snapshot_repr_is_short(tokenizer, texts):
    s = lp.take_snapshot(tiny_bert(0), tokenizer, texts[:8], progress=False)
    assert repr(s).startswith("Snapshot(BertModel, 5 entries, 8 examples") and len(repr(s)) < 200


def test_recommend_takes_a_comparison_json(comparison, tmp_path):
    want = comparison.recommendation.freeze
    assert lp.recommend(comparison.to_json()).freeze == want
    assert lp.recommend(json.loads(comparison.to_json())).freeze == want
    assert lp.recommend(comparison).freeze == want
    (tmp_path / "c.json").write_text(comparison.to_json())
    assert lp.recommend(str(tmp_path / "c.json")).freeze == want


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer, texts):
    d = tmp_path_factory.mktemp("m")
    tiny_bert(0).save_pretrained(d / "m")
    tokenizer.save_pretrained(d / "m")
    (d / "probe.txt").write_text("\n".join(texts[:12]) + "\n")
    return d


def test_cli_block_override_keeps_the_model_index(model_dir, tmp_path):
    out = tmp_path / "s.pt"
    assert main(["snapshot", str(model_dir / "m"), "--probe", str(model_dir / "probe.txt"), "-o", str(out),
                 "--quiet", "--blocks", "encoder.layer.[23]", "--embeddings", ""]) == 0
    s = lp.Snapshot.load(out)
    assert s.names == ["block.2", "block.3"]
    # block.2 under the override is the same module as block.2 found by default
    full = lp.take_snapshot(lp.load_hf_model(model_dir / "m")[0], lp.load_hf_model(model_dir / "m")[1],
                            (model_dir / "probe.txt").read_text().split("\n")[:12], progress=False)
    assert torch.allclose(s.representations["block.2"], full.representations["block.2"], atol=1e-6)
    m = lp.load_hf_model(model_dir / "m")[0]
    lp.freeze(m, ["block.2"])
    assert not any(p.requires_grad for p in m.encoder.layer[2].parameters())


def test_cli_dtype_recorded_and_mismatch_noted(model_dir, tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, dtype in ((a, "float32"), (b, "bfloat16")):
        assert main(["snapshot", str(model_dir / "m"), "--probe", str(model_dir / "probe.txt"), "-o", str(path),
                     "--quiet", "--dtype", dtype, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["dtype"] == {"a": "float32", "b": "bfloat16"} and doc["meta"]["device"]["a"] == "cpu"
    assert any("different dtypes" in n for n in doc["recommendation"]["notes"])
    absent = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 7}"  # past the last device
    assert main(["compare", str(model_dir / "m"), str(model_dir / "m"), "--device", absent]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"layerprobe: error: --device {absent}: ") and len(err.splitlines()) == 1


def test_model_mismatch_compares_each_entry_parameter_count(comparison):
    same = tiny_bert(5)  # other weights, the same architecture
    assert comparison.model_mismatch(same) is None
    assert [e["n_params"] for e in comparison.blocks][:2] == [
        sum(p.numel() for p in same.embeddings.parameters()), sum(p.numel() for p in same.encoder.layer[0].parameters())]
    wide = tiny_bert(0, hidden_size=64)
    want = sum(p.numel() for p in wide.embeddings.parameters())
    assert comparison.model_mismatch(wide) == (f"embeddings has {comparison.blocks[0]['n_params']:,} parameters in the "
                                               f"comparison, {want:,} in the model")
    assert comparison.model_mismatch(tiny_bert(0, num_hidden_layers=2)) == (
        "block.2 is not an entry of the model, which has ['embeddings', 'block.0', 'block.1']")
    assert comparison.model_mismatch(tiny_bert(0, num_hidden_layers=6)) is None  # a subset (compare --blocks) is fine
    assert comparison.model_mismatch(tiny_bert(0, head=True)) is None  # a head is outside the entries
