"""Test accuracy vs training CPU time (one torch thread) for every run of the freeze study at real
budgets, one panel per task: full fine-tuning, fixed frozen prefixes (labelled), the static advice
(ringed) and the same-run auto freeze; one point per seed. Drawn from analyses/results/summary.csv."""

from __future__ import annotations

import _common as C
import matplotlib.pyplot as plt
import seaborn as sns


def main() -> None:
    a = C.parse("fig_study_accuracy_vs_cpu", __doc__)
    df = C.summary(a.results)
    tasks = C.task_order(df.task)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = df[df.task == task]
        for method in ("fixed", "full", "auto"):
            m = d[d.method == method]
            ax.scatter(m.train_cpu_seconds, m.accuracy, s=36, color=C.METHOD_COLORS[method], label=method,
                       zorder=3, edgecolor="white", linewidth=0.5)
        adv = d[d.method == "advice"]
        ax.scatter(adv.train_cpu_seconds, adv.accuracy, s=140, facecolor="none", edgecolor=C.METHOD_COLORS["advice"],
                   linewidth=2, label="advice (static)", zorder=4)
        fx = d[d.method == "fixed"].groupby("config")[["train_cpu_seconds", "accuracy"]].mean()
        for cfg, r in fx.iterrows():
            ax.annotate(cfg, (r.train_cpu_seconds, r.accuracy), fontsize=8, xytext=(3, -10), textcoords="offset points")
        full = d[d.method == "full"].accuracy.mean()
        if full == full:
            ax.axhline(0.99 * full, color="0.4", ls="--", lw=1, label="99% of full FT (mean)")
        ax.set_title(C.TASK_TITLES.get(task, task))
        ax.set_xlabel("training CPU seconds (1 thread)")
        ax.set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
