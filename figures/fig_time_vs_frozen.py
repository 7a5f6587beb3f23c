"""Training CPU time (bars, the study's measure; wall time as markers) and trainable parameters vs
frozen bottom prefix, mean ± std over seeds, one panel per task; advised configurations marked."""

from __future__ import annotations


import _common as C


def main() -> None:
    a, adv, df, panels, fig = C.study_panels("fig_time_vs_frozen", __doc__)
    for task, ax, d, order in panels:
        g = d.groupby("config").agg(t=("train_cpu_seconds", "mean"), s=("train_cpu_seconds", "std"),
                                    w=("train_seconds", "mean"), p=("trainable_params", "first")).reindex(order)
        x = list(range(len(order)))
        ax.bar(x, g["t"], yerr=g["s"].fillna(0), capsize=4, color="#4C72B0", alpha=0.85,
               label="training CPU time (the study's measure)")
        ax.plot(x, g["w"], "_", color="black", ms=14, mew=2, label="wall time (shared machine: noisy)")
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
        ax.set_ylabel("training time (s), mean ± std over seeds")
        ax.set_xlabel("frozen bottom prefix")
        ax.set_title(C.TASK_TITLES.get(task, task), fontsize=10, loc="left")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
