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

TASK_TITLES = {"rt": "Rotten Tomatoes (2 classes)", "bbc": "BBC News (5 classes)"}
CONFIG_ORDER = ["full", "emb"] + [f"emb+{k}" for k in range(1, 7)]


def parse(name: str, doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--results", default=os.path.join(ROOT, "analyses", "results"), help="study results dir")
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


def study_panels(name: str, doc: str):
    """Parse the arguments, read the study's summary and advice, and open one panel per task.

    Returns ``(args, advice, summary DataFrame, [(task, axis, task rows, config order), ...], fig)``.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    a = parse(name, doc)
    adv = read_json(os.path.join(a.results, "advice.json"))
    df = pd.read_csv(os.path.join(a.results, "summary.csv"))
    tasks = [t for t in tasks_in(a.results) if t in set(df.task)]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    panels = []
    for ax, task in zip(axes[0], tasks):
        d = df[df.task == task]
        panels.append((task, ax, d, [c for c in CONFIG_ORDER if c in set(d.config)]))
    return a, adv, df, panels, fig


def save(fig, path: str) -> None:
    from layerprobe.plots import save_figure

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path)
    print("wrote", path)
