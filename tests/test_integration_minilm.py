"""Integration on the shipped MiniLM-L6 and real Rotten Tomatoes text (slow: run with -m slow)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt():
    from layerprobe.demo.shipped import rotten_tomatoes_splits

    return rotten_tomatoes_splits(train_size=320, test_size=200, probe_size=96, seed=0)


def test_short_fine_tune_changes_top_blocks_most(rt):
    from layerprobe import compare, find_blocks, take_snapshot
    from layerprobe.demo.shipped import default_model_path, load_classifier
    from layerprobe.demo.train import TrainConfig, fine_tune

    train, _test, probe = rt
    model, tok = load_classifier(default_model_path(), 2, seed=0)
    assert find_blocks(model).names == ["embeddings"] + [f"block.{i}" for i in range(6)]
    texts = probe["text"].tolist()
    base = take_snapshot(model, tok, texts, max_length=64, progress=False)
    stats = fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(),
                      TrainConfig(epochs=1, lr=1e-4, batch_size=32, max_length=64), progress=False)
    assert stats["steps"] == 10
    tuned = take_snapshot(model, tok, texts, max_length=64, progress=False)
    c = compare(base, tuned)
    cka = [b["cka"] for b in c.blocks]
    assert cka[0] > 0.99  # embeddings barely move
    assert cka[-1] < cka[1]  # the top block changed more than the bottom one (Merchant et al.)
    assert all(0 < b["weight_drift"] < 0.1 for b in c.blocks)
    assert c.recommendation.freeze[:1] == ["embeddings"]


def test_demo_command_small(tmp_path):
    from layerprobe.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-size", "64", "--probe-size", "32", "--test-size", "64",
                 "--quiet"]) == 0
    for f in ["base.pt", "tuned.pt", "comparison.json", "comparison.csv", "groups.csv", "blocks.png", "run.json"]:
        assert (out / f).stat().st_size > 0, f
    result = json.loads((out / "comparison.json").read_text())
    assert len(result["blocks"]) == 7 and result["meta"]["n_examples"] == 32


def test_revert_test_on_the_real_model_from_its_model_directory(rt, tmp_path):
    """The shipped MiniLM directory (a bare BertModel: no head) as the base, a classifier fine-tuned from it
    as the tuned side: the revert test runs by default (the shipped predictor reads it), the base's weights
    are matched to the classifier's by entry, reverting more of the model moves the outputs more, and a
    tolerance makes the prediction decide (its advice is a bottom prefix within that tolerance)."""
    from layerprobe import compare
    from layerprobe.demo.shipped import default_model_path, load_classifier
    from layerprobe.demo.train import TrainConfig, fine_tune
    from layerprobe.freezing.predict import shipped_prefers_revert
    from layerprobe.options import ProbeOptions

    train, _test, probe = rt
    model, tok = load_classifier(default_model_path(), 2, seed=0)
    fine_tune(model, tok, train["text"].tolist(), train["label"].tolist(),
              TrainConfig(epochs=1, lr=1e-4, batch_size=32, max_length=64), progress=False)
    texts = probe["text"].tolist()
    c = compare(default_model_path(), model, texts, tok, probe_options=ProbeOptions(max_length=64), tolerance=0.01)
    rows = c.meta["revert"]["rows"] if shipped_prefers_revert() else []
    if shipped_prefers_revert():
        assert [r["k"] for r in rows] == list(range(7))
        assert rows[-1]["kl"] > rows[0]["kl"] >= 0.0  # everything reverted moves the outputs more than the embeddings
        assert c.recommendation.predictor["name"].startswith("revert")
    rec = c.recommendation
    assert rec.tolerance == 0.01 and rec.candidates
    k = len(rec.freeze)
    assert rec.freeze == ["embeddings"] + [f"block.{i}" for i in range(k - 1)] if k else rec.freeze == []
    assert all(cand["within_tolerance"] for cand in rec.candidates[:k])
