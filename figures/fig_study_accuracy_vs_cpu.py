"""Accuracy vs training CPU for every run of the freeze study at real budgets, one panel per task, both
relative to the full fine-tuning run of the same seed (CPU read in each run's own full-step reference units
where both runs have one, else raw one-thread CPU seconds: study_predict.cpu_ratio): full fine-tuning at
(1, 1), fixed frozen prefixes (labelled), the static advice (ringed), the same-run auto freeze and LoRA;
one point per seed. Drawn from analyses/results/summary.csv."""

from __future__ import annotations

import os
import sys

import _common as C
import matplotlib.pyplot as plt
import seaborn as sns

sys.path.insert(0, os.path.join(C.ROOT, "analyses"))
from study_predict import cpu_ratio  # noqa: E402


def main() -> None:
    a = C.parse("fig_study_accuracy_vs_cpu", __doc__)
    df = C.summary(a.results)
    # a task with nothing but its full runs has nothing to compare yet
    tasks = [t for t in C.task_order(df.task) if (df[df.task == t].method != "full").any()]
    sns.set_theme(style="whitegrid", context="notebook")
    cols = min(3, max(1, len(tasks)))
    rows = -(-max(1, len(tasks)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_axis_off()
    colors = {**C.METHOD_COLORS, "lora": "#fc8d62"}
    for ax, task in zip(axes.flat, tasks):
        d = df[df.task == task].copy()
        full = {int(r.seed): r for r in d[d.method == "full"].itertuples()}
        d = d[d.seed.astype(int).isin(full)]
        d["x"] = [cpu_ratio(r, full[int(r.seed)], per_epoch=False) for r in d.itertuples()]
        d["y"] = [r.accuracy / full[int(r.seed)].accuracy for r in d.itertuples()]
        for method in ("fixed", "full", "auto", "lora"):
            m = d[d.method == method]
            if len(m):
                ax.scatter(m.x, m.y, s=36, color=colors[method], label=method, zorder=3, edgecolor="white",
                           linewidth=0.5)
        adv = d[d.method == "advice"]
        ax.scatter(adv.x, adv.y, s=140, facecolor="none", edgecolor=colors["advice"], linewidth=2,
                   label="advice (static)", zorder=4)
        fx = d[d.method == "fixed"].groupby("config")[["x", "y"]].mean()
        for cfg, r in fx.iterrows():
            ax.annotate(cfg, (r.x, r.y), fontsize=8, xytext=(3, -10), textcoords="offset points")
        ax.axhline(0.99, color="0.4", ls="--", lw=1, label="99% of full FT")
        n = d.seed.nunique()
        ax.set_title(f"{C.TASK_TITLES.get(task, task)}, {n} seed{'s' if n != 1 else ''}")
        ax.set_xlabel("training CPU / full fine-tuning (same seed)")
        ax.set_ylabel("accuracy / full fine-tuning (same seed)")
    seen: dict = {}
    for ax in axes.flat[:len(tasks)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=len(seen), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
