"""Smoke test of the CKA benchmark (``benchmarks/bench_cka.py --quick``): it runs, writes its
CSV and Markdown, and the implementations agree where their estimator is the same."""

from __future__ import annotations

import importlib.util
import os

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_cka", os.path.join(ROOT, "benchmarks", "bench_cka.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_quick(tmp_path):
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path), "--peers", str(tmp_path / "no-peers")]) == 0
    df = pd.read_csv(tmp_path / "cka.csv")
    assert {"floor", "layerprobe", "gram"} <= set(df["impl"])
    lp = df[df["impl"] == "layerprobe"].set_index("n")
    gram = df[df["impl"] == "gram"].set_index("n")
    assert ((lp["value"] - gram["value"]).abs() < 1e-12).all()  # the Gram form gives the same value
    assert (lp["floor_same_process_s"] > 0).all()
    md = (tmp_path / "cka.md").read_text()
    assert "| n | d |" in md and "Cross-layer map" in md and "layerprobe / d×d-product floor" in md
