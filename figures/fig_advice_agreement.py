"""How early is the advice known? For each full fine-tuning run of the study, the advice (the
study's fitted rule on the tracker's CKA to the start) at 5, 10, 20 and 50% of the run vs at its end:
left, the number of frozen blocks advised per task and seed; right, the share of task-seeds whose
advice already equals the end's. Drawn from analyses/results/advice_timing.csv."""

from __future__ import annotations

import os

import _common as C
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def _k(cfg: str) -> int:
    return 0 if cfg in ("full", "emb") else int(cfg.split("+")[1])


def main() -> None:
    a = C.parse("fig_advice_agreement", __doc__)
    t = pd.read_csv(os.path.join(a.results, "advice_timing.csv"))
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for (task, seed), g in t.groupby(["task", "seed"]):
        g = g.sort_values("fraction")
        x = list(g.fraction) + [1.0]
        y = [_k(c) for c in g.advice] + [_k(g.advice_end.iloc[0])]
        ax1.plot(x, y, marker="o", label=f"{task} seed {seed}", alpha=0.8)
    ax1.set_xlabel("fraction of the run")
    ax1.set_ylabel("blocks advised frozen (+ embeddings)")
    ax1.legend(fontsize=8)
    agree = t.groupby(["fraction", "task"]).agrees.mean().unstack()
    agree.plot(kind="bar", ax=ax2, rot=0)
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("fraction of the run")
    ax2.set_ylabel("share of seeds: advice = advice at the end")
    fig.suptitle("Advice over the run (tracker probe, fitted rule)")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
