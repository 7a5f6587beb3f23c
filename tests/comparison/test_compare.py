"""compare: identical models, local perturbations, different models, every input kind, JSON contract."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_bert
from layerprobe.options import CKAOptions, ProbeOptions
from layerprobe import Thresholds, compare, take_snapshot
from layerprobe.errors import LayerProbeError

NAMES = ["embeddings", "block.0", "block.1", "block.2", "block.3"]


def perturbed(layers, scale=0.2, seed=0):
    m = tiny_bert(0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layers:
            for p in m.encoder.layer[i].parameters():
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return m


def test_model_against_itself_is_unchanged(bert, tokenizer, texts):
    c = compare(bert, bert, texts, tokenizer)
    assert [e["name"] for e in c.blocks] == NAMES
    for e in c.blocks:
        assert e["cka"] == pytest.approx(1.0, abs=1e-12)
        assert e["weight_drift"] == 0.0 and e["weight_cosine"] == pytest.approx(1.0)
        assert all(g["weight_drift"] == 0.0 for g in e["groups"].values())


def test_perturbing_top_blocks_changes_only_those(tokenizer, texts):
    base, tuned = tiny_bert(0), perturbed([2, 3])
    c = compare(base, tuned, texts, tokenizer)
    by = {e["name"]: e for e in c.blocks}
    for n in ["embeddings", "block.0", "block.1"]:
        assert by[n]["weight_drift"] == 0.0 and by[n]["cka"] == pytest.approx(1.0, abs=1e-9)
    for n in ["block.2", "block.3"]:
        assert by[n]["weight_drift"] == pytest.approx(0.2, rel=0.35)
        assert by[n]["cka"] < 0.999
    # representations above a changed block change too, below it they do not
    assert c.recommendation.freeze == ["embeddings", "block.0", "block.1"]
    assert "< 0.99" in c.recommendation.reasons["block.2"]  # the first changed block stops the prefix


def test_two_different_models_never_look_identical(tokenizer, texts):
    c = compare(tiny_bert(0), tiny_bert(1), texts, tokenizer)
    for e in c.blocks:
        assert e["weight_drift"] > 0.2  # layer norms start at 1 in both: less than 1
        assert e["cka"] < 0.99
    assert c.recommendation.freeze == []


def test_snapshots_files_and_models_agree(tmp_path, tokenizer, texts):
    base, tuned = tiny_bert(0), perturbed([3])
    sa = take_snapshot(base, tokenizer, texts, progress=False)
    sb = take_snapshot(tuned, tokenizer, texts, progress=False)
    pa, pb = sa.save(tmp_path / "a.pt"), sb.save(tmp_path / "b.pt")
    from_files = compare(pa, pb)
    from_models = compare(base, tuned, texts, tokenizer)
    for x, y in zip(from_files.blocks, from_models.blocks):
        assert x["cka"] == pytest.approx(y["cka"], abs=1e-12)
        assert x["weight_drift"] == y["weight_drift"]
    # a snapshot against a live model: the model follows the snapshot's probe settings
    mixed = compare(sa, tuned, texts, tokenizer)
    assert mixed.blocks[-1]["cka"] == pytest.approx(from_models.blocks[-1]["cka"], abs=1e-9)


def test_hf_dirs_with_probe_and_weights_only(tmp_path, tokenizer, texts):
    base, tuned = tiny_bert(0, head=True), perturbed([3])
    da, db = tmp_path / "base", tmp_path / "tuned"
    base.save_pretrained(da)
    tuned.save_pretrained(db)  # bare model vs task-head model: names differ by "bert." prefix
    tokenizer.save_pretrained(da)
    tokenizer.save_pretrained(db)
    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(texts) + "\n")
    c = compare(str(da), str(db), probe=str(probe))
    assert c.meta["cka_computed"] and c.blocks[1]["cka"] == pytest.approx(1.0, abs=1e-9)
    assert c.blocks[-1]["cka"] < 0.9999
    w = compare(str(da), str(db))
    assert not w.meta["cka_computed"] and "no probe given" in w.meta["cka_missing_reason"]
    # same numbers; only the summation order differs (file order vs model order)
    assert [e["weight_drift"] for e in w.blocks] == pytest.approx([e["weight_drift"] for e in c.blocks], rel=1e-12)
    assert all(e["cka"] is None for e in w.blocks)
    assert w.recommendation.freeze == [] and "CKA not computed" in w.recommendation.notes[0]
    # the head (classifier, pooler) is reported outside the blocks, not as a mismatch
    assert any(n.startswith("classifier") for n in w.other["unmatched"])


def test_safetensors_and_state_dict_files(tmp_path):
    base, tuned = tiny_bert(0), perturbed([1])
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, tmp_path / "a.safetensors")
    torch.save(tuned.state_dict(), tmp_path / "b.pt")
    c = compare(str(tmp_path / "a.safetensors"), str(tmp_path / "b.pt"))
    drift = [e["weight_drift"] for e in c.blocks]
    assert drift[0] == 0.0 and drift[1] == 0.0 and drift[2] > 0.1 and drift[3] == 0.0


def test_mixed_dtypes_compare_in_float64(tmp_path):
    base = tiny_bert(0)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, tmp_path / "a.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in base.state_dict().items()}, tmp_path / "b.safetensors")
    c = compare(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
    for e in c.blocks:  # bf16 rounding: relative error ~2^-9
        assert 1e-4 < e["weight_drift"] < 4e-3


def test_different_probes_are_refused(tokenizer, texts):
    sa = take_snapshot(tiny_bert(0), tokenizer, texts, progress=False)
    sb = take_snapshot(tiny_bert(0), tokenizer, texts[:-1], progress=False)
    with pytest.raises(LayerProbeError, match="probe fingerprints differ"):
        compare(sa, sb)


def test_architecture_mismatch_is_named(tokenizer, texts):
    with pytest.raises(LayerProbeError, match="block count differs: .* 4 blocks, .* 2"):
        compare(tiny_bert(0), tiny_bert(0, num_hidden_layers=2))
    with pytest.raises(LayerProbeError, match="parameter shapes differ for block.0/"):
        compare(tiny_bert(0), tiny_bert(0, intermediate_size=40))


def test_json_contract_and_determinism(tokenizer, texts):
    c = compare(tiny_bert(0), perturbed([3]), texts, tokenizer, thresholds=Thresholds(min_cka=0.9))
    d = json.loads(c.to_json())
    assert set(d) >= {"blocks", "recommendation", "meta"}
    first = d["blocks"][0]
    assert (first["index"], first["name"], first["kind"]) == (-1, "embeddings", "embeddings")
    assert [b["index"] for b in d["blocks"]] == [-1, 0, 1, 2, 3]
    for b in d["blocks"]:
        assert isinstance(b["cka"], float) and isinstance(b["weight_drift"], float) and isinstance(b["n_params"], int)
    r = d["recommendation"]
    assert set(r) >= {"freeze", "train", "frozen_param_fraction", "reasons", "thresholds"}
    assert r["thresholds"]["min_cka"] == 0.9 and set(r["reasons"]) == set(NAMES)
    assert set(r["freeze"]) | set(r["train"]) == set(NAMES)
    assert d["meta"]["n_examples"] == 48 and d["meta"]["pooling"] == "mean"
    again = compare(tiny_bert(0), perturbed([3]), texts, tokenizer, thresholds=Thresholds(min_cka=0.9))
    assert again.to_json() == c.to_json()
    df = c.to_frame()
    assert list(df.index) == NAMES and {"cka", "weight_drift", "advice", "reason"} <= set(df.columns)
    assert not math.isnan(df["cka"].iloc[-1])


def test_token_level_comparison(tokenizer, texts):
    c = compare(tiny_bert(0), perturbed([3]), texts, tokenizer, probe_options=ProbeOptions(pooling="tokens", max_tokens=6))
    assert c.meta["pooling"] == "tokens"
    assert c.blocks[0]["cka"] == pytest.approx(1.0) and c.blocks[-1]["cka"] < 1.0


def test_weights_only_snapshot_gives_drift_only(tokenizer, texts):
    c = compare(take_snapshot(tiny_bert(0)), take_snapshot(perturbed([3])))
    assert not c.meta["cka_computed"] and c.blocks[-1]["weight_drift"] > 0.1


def test_candidates_and_tolerance(tokenizer, texts):
    base, tuned = tiny_bert(0), perturbed([2, 3])
    c = compare(base, tuned, texts, tokenizer)
    r = c.recommendation
    # every prefix that leaves a block to train, each with a prediction from the shipped fit
    assert [x["freeze"][-1] for x in r.candidates] == ["embeddings", "block.0", "block.1", "block.2"]
    assert r.tolerance is None and r.predictor["name"] in ("cka_rel", "cka_abs", "drift_rel")
    assert all(0.0 < x["predicted_rel_acc"] <= 1.1 for x in r.candidates)
    assert [x["compute_saved"] for x in r.candidates] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    # the unchanged bottom prefix is predicted to cost (nearly) nothing, the changed block more
    assert r.candidates[2]["predicted_rel_acc"] >= r.candidates[3]["predicted_rel_acc"]
    doc = json.loads(c.to_json())
    assert doc["recommendation"]["candidates"][0]["freeze"] == ["embeddings"]
    t = compare(base, tuned, texts, tokenizer, tolerance=0.02).recommendation
    assert t.tolerance == 0.02 and all(w.startswith(("freeze: predicted", "train")) for w in t.reasons.values())
    with pytest.raises(LayerProbeError, match="tolerance must be a number in"):
        compare(base, tuned, texts, tokenizer, tolerance=1.5)


def test_revert_test_runs_on_model_sides_and_matches_revert_test(tokenizer, texts):
    """compare(revert=True): meta.revert equals revert_test run by hand with the base's weights (the base
    given without its head: matched by entry), the prediction uses it, and where it cannot run the error
    says why (no head, no probe)."""
    import torch

    from layerprobe.freezing.revert import revert_test
    from layerprobe.model.batching import collate
    from layerprobe.snapshot.take import tokenize_probe

    base = tiny_bert(0)  # a bare encoder: no head
    tuned = tiny_bert(0, head=True)
    tuned.bert.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.bert.encoder.layer[0].parameters():
            p.add_(0.2 * torch.randn_like(p))
    c = compare(base, tuned, texts[:24], tokenizer, revert=True, probe_options=ProbeOptions(max_length=16),
                cka_options=CKAOptions(n_boot=50))
    rows = c.meta["revert"]["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2, 3, 4]
    examples, _ = tokenize_probe(tokenizer, texts[:24], 16)
    state = {f"bert.{n}": t for n, t in base.state_dict().items() if n.startswith(("embeddings", "encoder"))}
    ref = revert_test(tuned, state, [collate(examples, tokenizer.pad_token_id)])
    for got, want in zip(rows, ref):
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-9, abs=1e-15)
        assert got["agreement"] == want["agreement"]
    assert rows[0]["kl"] == 0.0 and rows[0]["agreement"] == 1.0  # the embeddings did not change
    assert rows[1]["kl"] > 0  # reverting block.0 (the changed one) moves the outputs
    assert all(p.requires_grad for p in tuned.parameters())  # the tuned model is left as it was
    assert compare(base, tuned, texts[:24], tokenizer, revert=False).meta.get("revert") is None
    with pytest.raises(LayerProbeError, match="no logits"):
        compare(tuned, base, texts[:24], tokenizer, revert=True)
    with pytest.raises(LayerProbeError, match="needs a probe"):
        compare(base, tuned, None, tokenizer, revert=True)


def test_revert_rows_validate_against_the_schema(tokenizer, texts):
    pytest.importorskip("jsonschema")
    from layerprobe.results import schema

    tuned = tiny_bert(0, head=True)
    c = compare(tiny_bert(0, head=True), tuned, texts[:24], tokenizer, revert=True,
                probe_options=ProbeOptions(max_length=16), cka_options=CKAOptions(n_boot=20))
    doc = json.loads(c.to_json())
    schema.validate(doc)
    assert [r["kl"] for r in doc["meta"]["revert"]["rows"]] == [0.0] * 5  # identical weights: nothing moves


def test_calibrate_measures_the_step_cost_on_the_tuned_model(tokenizer, texts):
    """issue 17 §4: the savings printed were a parameter-count guess unless the user calibrated in Python;
    compare(calibrate=True) / --calibrate times training steps per frozen prefix on the tuned model."""
    from layerprobe.results import schema

    base, tuned = tiny_bert(0, head=True), tiny_bert(1, head=True)
    c = compare(base, tuned, texts, tokenizer, calibrate=True, revert=False, tolerance=0.5)
    sc = c.meta["step_cost"]
    assert list(sc["served"]) == NAMES and list(sc["fill"]) == NAMES and sc["threads"] == 1 and sc["steps"] == 3
    assert sc["batch_shape"][0] == min(32, len(texts)) and sc["full"] > 0
    for name in NAMES:
        assert sc["saving"][name] == pytest.approx(1 - sc["served"][name] / sc["full"])
    # the candidates' compute saved per prefix is the measured saving of that prefix (cumulative shares)
    got = [cand["compute_saved"] for cand in c.recommendation.candidates]
    assert got == pytest.approx([sc["saving"][n] for n in NAMES[: len(got)]])
    assert any(n.startswith("compute saving measured on the model") for n in c.recommendation.notes)
    schema.validate(json.loads(c.to_json()))
    # the tuned model itself is left as it was (a copy is timed)
    assert all(p.requires_grad for p in tuned.parameters())
    without = compare(base, tuned, texts, tokenizer, revert=False, tolerance=0.5)
    assert "step_cost" not in without.meta


def test_calibrate_needs_a_probe_and_a_model_side(tokenizer, texts):
    from layerprobe.errors import LayerProbeTypeError

    base, tuned = tiny_bert(0, head=True), tiny_bert(1, head=True)
    with pytest.raises(LayerProbeError, match="calibrating the step cost needs a probe"):
        compare(base, tuned, calibrate=True)
    snap = take_snapshot(tuned, tokenizer, texts)
    with pytest.raises(LayerProbeError, match="needs the tuned side as a model run here"):
        compare(take_snapshot(base, tokenizer, texts), snap, texts, calibrate=True)
    with pytest.raises(LayerProbeTypeError, match="calibrate must be True or False"):
        compare(base, tuned, texts, tokenizer, calibrate="yes")
