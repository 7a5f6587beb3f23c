"""Auto runs re-made with today's tracker, read beside their originals (fabricated runs whose ratios are known)."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import study_tracker_rerun as tr  # noqa: E402

NAME = "auto_full_lr0.0001_seed2.json"


def _write(path, run):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(run, fh)


def _auto(tracker, train, steps=300, frozen=("embeddings", "block.0"), at=100):
    return {"task": "trec", "seed": 2, "lr": 1e-4, "accuracy": 0.95, "steps": steps, "epochs": 3.0,
            "train_cpu_seconds": train, "tracker_cpu_seconds": tracker, "ref_full_step_cpu": 0.5,
            "auto": {"frozen": list(frozen), "freeze_steps": {e: at for e in frozen}},
            "auto_options": {"tolerance": 0.01, "predictor": {"name": "revert_disagree", "decide": "upper"}}}


@pytest.fixture
def caches(tmp_path):
    cache, rerun = tmp_path / "cache", tmp_path / "rerun"
    _write(cache / "trec" / NAME, _auto(tracker=40.0, train=200.0))
    full = {"task": "trec", "seed": 2, "accuracy": 0.95, "steps": 300, "epochs": 3.0, "train_cpu_seconds": 250.0,
            "ref_full_step_cpu": 0.5}
    _write(cache / "trec" / NAME.replace("auto_full_", "full_full_"), full)
    _write(rerun / "trec_s2" / "cache" / "trec" / NAME, _auto(tracker=20.0, train=180.0))
    return str(cache), str(rerun)


def test_a_rerun_is_read_beside_its_original_in_reference_units(caches):
    df = tr.pair_table(*caches)
    assert len(df) == 1
    r = df.iloc[0]
    assert r.same_decisions and r.frozen_before == "embeddings@100 block.0@100"
    assert r.tracker_ratio == pytest.approx(0.5)
    # whole-run CPU in reference units: (train / steps / ref) over the full run's, same steps
    assert r.cpu_vs_full_before == pytest.approx(200 / 250)
    assert r.cpu_vs_full_after == pytest.approx(180 / 250)
    assert r.tracker_share_after == pytest.approx(20 / 180)
    md = tr.markdown(df)
    assert "| trec | 2 | 0.9500 → 0.9500 | yes | 40 s → 20 s (×0.50) | 0.80 → 0.72 |" in md


def test_other_decisions_are_said_and_runs_without_an_original_are_left_out(caches):
    cache, rerun = caches
    _write(os.path.join(rerun, "trec_s2", "cache", "trec", NAME),
           _auto(tracker=20.0, train=180.0, frozen=("embeddings",), at=120))
    _write(os.path.join(rerun, "sms_s0", "cache", "sms", "auto_full_lr0.0001_seed0.json"),
           {**_auto(10.0, 100.0), "task": "sms", "seed": 0})
    df = tr.pair_table(cache, rerun)
    assert list(df.task) == ["trec"]
    assert not df.iloc[0].same_decisions
    assert "no (embeddings@100 block.0@100 → embeddings@120)" in tr.markdown(df)


def test_make_refuses_a_run_not_driven_by_a_fold_predictor(caches, tmp_path):
    cache, rerun = caches
    path = os.path.join(cache, "trec", NAME)
    run = _auto(40.0, 200.0)
    run["auto_options"] = {"thresholds": {"max_relative_change": 0.03}}
    _write(path, run)
    with pytest.raises(SystemExit, match="not driven by a fold predictor"):
        tr.make("trec", 2, cache, rerun)
