"""Training wall time (and trainable parameters) vs frozen bottom prefix, mean ± std over seeds,
one panel per task; advised configurations marked. Wall time on a shared 2-core CPU: noisy."""

from __future__ import annotations

import os

import _common as C
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def main() -> None:
    a = C.parse("fig_time_vs_frozen", __doc__)
    adv = C.read_json(os.path.join(a.results, "advice.json"))
    df = pd.read_csv(os.path.join(a.results, "summary.csv"))
    tasks = [t for t in C.tasks_in(a.results) if t in set(df.task)]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        d = df[df.task == task]
        order = [c for c in C.CONFIG_ORDER if c in set(d.config)]
        g = d.groupby("config").agg(t=("train_seconds", "mean"), s=("train_seconds", "std"),
                                    p=("trainable_params", "first")).reindex(order)
        x = list(range(len(order)))
        ax.bar(x, g["t"], yerr=g["s"].fillna(0), capsize=4, color="#4C72B0", alpha=0.85)
        info = adv["tasks"][task]
        for key, color in (("default", "#C44E52"), ("calibrated", "#55A868")):
            cfg = (info.get(key) or {}).get("config")
            if key == "calibrated" and info.get(key, {}).get("min_cka") == 0.95:
                continue  # the default was kept
            if cfg in order:
                i = order.index(cfg)
                ax.bar([i], [g.loc[cfg, "t"]], fill=False, edgecolor=color, lw=2.5,
                       label="advice (default 0.95)" if key == "default" else f"advice (calibrated {info[key]['min_cka']})")
        ax2 = ax.twinx()
        ax2.plot(x, g["p"] / 1e6, "o--", color="#DD8452", label="trainable params (M)")
        ax2.set_ylabel("trainable parameters (millions)", color="#DD8452")
        ax2.grid(False)
        ax.set_xticks(x)
        ax.set_xticklabels(order, rotation=30)
        ax.set_ylabel("training wall time (s)")
        ax.set_xlabel("frozen bottom prefix")
        ax.set_title(C.TASK_TITLES.get(task, task), fontsize=10, loc="left")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
