"""Predicted vs measured accuracy of freezing each bottom prefix, leave-one-task-out: for the best-ranked
candidates (analyses/results/predictor_scores.csv), every (held-out task, prefix) pair of loto.csv — the
prediction from a fit on the other tasks against the accuracy the fixed-prefix runs measured (relative to
full fine-tuning, mean over seeds), with the fit's 10–90% interval. The band is the 1-point target."""

from __future__ import annotations

import os

import _common as C
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PANELS = 3  # best-ranked candidates shown
LOW = 0.90  # relative accuracies below this are drawn on the axis edge as triangles (the target is about >= 95%)


def main() -> None:
    a = C.parse("fig_predicted_vs_measured", __doc__)
    path = os.path.join(a.results, "loto.csv")
    pairs = pd.read_csv(path) if os.path.exists(path) and os.path.getsize(path) > 1 else pd.DataFrame()
    spath = os.path.join(a.results, "predictor_scores.csv")
    scores = pd.read_csv(spath) if os.path.exists(spath) and os.path.getsize(spath) > 1 else pd.DataFrame()
    # a decision variant (``cand@upper``) shares its candidate's predictions: one panel per measurement, in rank order
    ranked = [c.split("@")[0] for c in (scores.candidate.tolist() if len(scores) else [])]
    cands = [c for i, c in enumerate(ranked) if c not in ranked[:i] and len(pairs) and c in set(pairs.candidate)]
    cands = cands[:PANELS]
    fig, axes = plt.subplots(1, max(1, len(cands)), figsize=(4.6 * max(1, len(cands)), 4.6), squeeze=False)
    if not cands:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no leave-one-task-out pairs yet:\nneeds 3 tasks with full-run measures\n"
                "and fixed-prefix runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        C.save(fig, a.out)
        return
    tasks = C.task_order(pairs.fold)
    colors = dict(zip(tasks, plt.get_cmap("tab10").colors))
    for ax, cand in zip(axes[0], cands):
        p = pairs[(pairs.candidate == cand) & pairs.measured_loss.notna()]
        clipped = ((1 - p.measured_loss) < LOW).to_numpy() | ((1 - p.predicted_loss) < LOW).to_numpy()
        meas = np.clip(1 - p.measured_loss.to_numpy(), LOW, None)
        pred = np.clip(1 - p.predicted_loss.to_numpy(), LOW, None)
        lo = np.clip(1 - p.predicted_hi.to_numpy(), LOW, None)
        hi = np.clip(1 - p.predicted_lo.to_numpy(), LOW, None)
        lim = (LOW - 0.005, 1.015)
        ax.fill_between(lim, [lim[0] - 0.01, lim[1] - 0.01], [lim[0] + 0.01, lim[1] + 0.01], color="0.9",
                        label="within 1 point")
        ax.plot(lim, lim, color="0.5", lw=1)
        ax.axhline(0.99, color="0.6", ls=":", lw=1)
        ax.axvline(0.99, color="0.6", ls=":", lw=1)
        for task in tasks:
            m = (p.fold == task).to_numpy()
            if not m.any():
                continue
            ax.errorbar(meas[m], pred[m], yerr=[pred[m] - lo[m], hi[m] - pred[m]], fmt="o", ms=5, lw=0.8,
                        capsize=2, color=colors[task], label=C.TASK_TITLES.get(task, task).split(" (")[0])
            c = m & clipped
            ax.scatter(meas[c], pred[c], marker="v", s=60, color=colors[task], edgecolor="black", lw=0.6, zorder=4)
            for x, y, k in zip(meas[m], pred[m], p.k.to_numpy()[m]):
                ax.annotate(str(k), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points",
                            color=colors[task])
        by = scores.set_index("candidate")
        s = by.loc[cand]
        advice = [f"{name}: {int(r.tasks_ge_985)}/{int(r.tasks)} tasks >= 98.5%, regret {100 * r.mean_regret:.0f} pts"
                  for name, r in ((d, by.loc[c]) for d, c in (("point", cand), ("upper end", cand + "@upper"))
                                  if c in by.index)]
        ax.set_title(f"{cand}: {C.pct(s.calibration_within_1pt)} of pairs >= 95% within 1 pt\n"
                     + "\n".join(advice), fontsize=8.5)
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.set_aspect("equal")
        ax.set_xlabel(f"measured accuracy, relative to full FT\n(triangles: below {LOW:.0%}, drawn on the edge)",
                      fontsize=9)
        ax.set_ylabel("predicted (fit on the other tasks)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Freezing embeddings + k blocks (k labelled): predicted vs measured, leave-one-task-out",
                 fontsize=10)
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
