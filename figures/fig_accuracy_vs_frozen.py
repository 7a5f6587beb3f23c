"""Test accuracy vs number of frozen bottom entries (Lee et al.'s curve on our model), mean ± std over
seeds, one panel per task; full fine-tuning's 99% line and the advised configurations marked."""

from __future__ import annotations


import _common as C
import seaborn as sns


def main() -> None:
    a, adv, df, panels, fig = C.study_panels("fig_accuracy_vs_frozen", __doc__)
    for task, ax, d, order in panels:
        g = d.groupby("config")["accuracy"].agg(["mean", "std", "count"]).reindex(order)
        x = range(len(order))
        ax.errorbar(x, g["mean"], yerr=g["std"].fillna(0), fmt="o-", capsize=4, color="#4C72B0", label="mean ± std")
        sns.stripplot(data=d, x="config", y="accuracy", order=order, color="grey", size=3, alpha=0.6, ax=ax)
        if "full" in g.index:
            ax.axhline(0.99 * g.loc["full", "mean"], color="grey", ls="--", lw=1, label="99% of full FT")
        info = adv["tasks"][task]
        for key, marker, color in (("default", "*", "#C44E52"), ("calibrated", "D", "#55A868")):
            cfg = (info.get(key) or {}).get("config")
            if key == "calibrated" and info.get(key, {}).get("min_cka") == 0.95:
                continue  # the default was kept
            if cfg in order:
                label = "advice (default 0.95)" if key == "default" else f"advice (calibrated {info[key]['min_cka']})"
                ax.plot(order.index(cfg), g.loc[cfg, "mean"], marker, ms=16 if marker == "*" else 10, color=color,
                        mfc="none", mew=2, label=label)
        ax.set_xticks(list(x))
        ax.set_xticklabels(order, rotation=30)
        ax.set_xlabel("frozen bottom prefix (emb+k = embeddings + k blocks)")
        ax.set_ylabel("test accuracy")
        n = int(g["count"].max())
        ax.set_title(f"{C.TASK_TITLES.get(task, task)}, {n} seed{'s' if n > 1 else ''}", fontsize=10, loc="left")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
