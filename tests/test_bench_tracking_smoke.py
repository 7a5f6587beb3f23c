"""Smoke test of the tracker benchmark (``benchmarks/bench_tracking.py --smoke``) on the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # loads the real MiniLM three times: CI runs it with -m slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_tracking_smoke(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tracking.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "tracking.json").read_text())
    assert r["torch_threads"] == 1 and r["steps"] == 4 and r["every_n_steps"] == 2
    assert [x["variant"] for x in r["runs"]] == ["plain", "tracked", "tracked+revert"]
    for v in ("tracked", "tracked+revert"):
        assert r[v]["n_checks"] == 3  # steps 0, 2 and 4
        assert r[v]["cpu_per_check_s"] > 0 and r[v]["cpu_first_check_s"] > 0 and 0 < r[v]["tracker_share_pct"] < 100
        assert [len(x["check_cpu_seconds"]) for x in r["runs"] if x["variant"] == v] == [3]
    assert r["cpu_per_step_s"] > 0
    # the revert test adds passes to every check after the first: a check costs more with it
    assert r["tracked+revert"]["cpu_per_check_s"] > r["tracked"]["cpu_per_check_s"]
