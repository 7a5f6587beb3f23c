"""Smoke tests of the speed-round-2 benchmarks (``--quick``): they run and write their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each spawns a dozen interpreters: CI runs them with -m slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bench_drift_quick(tmp_path):
    run("bench_drift.py", tmp_path)
    r = json.loads((tmp_path / "drift_quick.json").read_text())
    for dt in ("float32", "bfloat16"):
        assert r["dtypes"][dt]["identical_1_vs_n_threads"]
        assert r["dtypes"][dt]["rel_diff_vs_baseline"] < 1e-9
    assert "drift / read" in (tmp_path / "drift_quick.md").read_text()


def test_bench_startup_quick(tmp_path):
    run("bench_startup.py", tmp_path)
    r = json.loads((tmp_path / "startup_quick.json").read_text())
    assert r["best_s"]["import layerprobe"] > 0 and "import_over_torch_transformers" in r


def test_bench_snapshot_compare_quick(tmp_path):
    run("bench_snapshot_compare.py", tmp_path)
    r = json.loads((tmp_path / "snapshot_compare_quick.json").read_text())
    assert r["cases"]["snapshot"]["file_mb"] > r["cases"]["snapshot"]["representations_mb"] > 0
    assert r["compare_over_two_forwards"] > 0 and "compare A B --probe" in (tmp_path / "snapshot_compare_quick.md").read_text()
