"""Shared bits of the figure scripts: argument parsing and reading the saved study results."""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")

TASK_TITLES = {"rt": "Rotten Tomatoes (2 classes)", "bbc": "BBC News (5 classes)", "trec": "TREC (6 classes)",
               "newsgroups": "20 Newsgroups (20 classes)", "sms": "SMS spam (2 classes)",
               "disaster": "Disaster tweets (2 classes)"}
CONFIG_ORDER = ["full", "emb"] + [f"emb+{k}" for k in range(1, 7)]


def parse(name: str, doc: str, results: str = "results") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--results", default=os.path.join(ROOT, "analyses", results), help="study results dir")
    p.add_argument("--out", default=os.path.join(ROOT, "figures", f"{name}.png"), help="PNG to write")
    return p.parse_args()


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def tasks_in(results: str) -> list[str]:
    adv = read_json(os.path.join(results, "advice.json"))
    return [t for t in ("rt", "bbc") if t in adv["tasks"]] + [t for t in adv["tasks"] if t not in ("rt", "bbc")]


def comparisons(results: str, task: str, suffix: str = "") -> list[dict]:
    d = os.path.join(results, "comparisons")
    out = []
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if f.startswith(f"{task}_seed") and f.endswith(f"{suffix}.json") and (suffix or "cross" not in f):
            out.append(read_json(os.path.join(d, f)))
    return out


METHOD_COLORS = {"full": "#444444", "fixed": "#8da0cb", "advice": "#e78ac3", "auto": "#66c2a5"}


def summary(results: str):
    """The study's summary.csv (one row per run) as a DataFrame."""
    import pandas as pd

    return pd.read_csv(os.path.join(results, "summary.csv"))


def task_order(tasks) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    return [t for t in ("rt", "bbc") if t in tasks] + [t for t in tasks if t not in ("rt", "bbc")]


def save(fig, path: str) -> None:
    from layerprobe.results.plots import save_figure

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path)
    print("wrote", path)


def pct(x, digits: int = 0) -> str:
    """``x`` as a percentage, or "n/a" for a missing value."""
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f}%"
