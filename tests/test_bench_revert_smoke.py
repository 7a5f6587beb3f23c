"""Smoke test of the revert-test benchmark (``benchmarks/bench_revert.py --quick``) on the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # loads the real MiniLM several times: CI runs it with -m slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_revert_quick(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_revert.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "revert.json").read_text())["rt"]
    assert r["checked"] and r["off"] is None  # the real BertModel is served from the whole-stack pass
    assert r["max_row_difference"] < 1e-6  # the same rows as the long way
    assert r["passes_long"] == 8 and r["passes_shortcut"] == 5.5
    assert r["revert_s"]["before"] > 0 and r["check_s"]["shortcut+batches"] > 0
