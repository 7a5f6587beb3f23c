"""Cross-layer linear CKA, base (rows) vs fully fine-tuned (columns), mean over seeds, one heatmap per
task. Read from the 7×7 matrices the first (one-epoch) study saved
(analyses/results_one_epoch/comparisons/<task>_seed<k>_cross_layer.json): a different, shorter budget."""

from __future__ import annotations

import _common as C
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def main() -> None:
    a = C.parse("fig_cross_layer", __doc__, results="results_one_epoch")
    tasks = [t for t in C.tasks_in(a.results) if C.comparisons(a.results, t, "_cross_layer")]
    sns.set_theme(style="white", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.6 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mats = C.comparisons(a.results, task, "_cross_layer")
        m = np.nanmean(np.array([[[np.nan if v is None else v for v in r] for r in x["cka"]] for x in mats]), axis=0)
        names = mats[0]["rows_base"]
        sns.heatmap(m, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"size": 7},
                    xticklabels=names, yticklabels=names, square=True, cbar_kws={"label": "linear CKA"})
        ax.set_xlabel("tuned model")
        ax.set_ylabel("base model")
        ax.set_title(f"{C.TASK_TITLES.get(task, task)}, {len(mats)} seed{'s' if len(mats) > 1 else ''}",
                     fontsize=10, loc="left")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
