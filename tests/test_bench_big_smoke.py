"""Smoke test of benchmarks/bench_big_checkpoint.py --quick: a ~40 MB fp32/bf16 sharded pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # writes and compares a ~40 MB pair: CI runs it with -m slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_big_checkpoint_quick(tmp_path):
    work, results = tmp_path / "pair", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_big_checkpoint.py"), "--quick",
         "--workdir", str(work), "--results", str(results)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((results / "big_checkpoint.json").read_text())
    assert r["quick"] and r["within_bound"]
    assert r["compare"]["n_blocks"] == 4
    drift = r["compare"]["drift"]
    # B = A + noise growing with depth, stored in bf16: every block changed, deeper ones more.
    assert 0 < drift["block.0"] < drift["block.1"] < drift["block.2"] < drift["block.3"] < 0.1
    assert r["largest_tensor"]["bytes"] == 8000 * 256 * 4
    assert "Peak RSS / largest tensor" in (results / "big_checkpoint.md").read_text()
    assert not work.exists(), "the generated pair must be deleted without --keep"
