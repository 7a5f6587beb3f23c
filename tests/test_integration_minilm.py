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
