"""Per-block change after full fine-tuning at real budgets: linear CKA base vs tuned (1 = unchanged),
the change relative to the top block's, 1 - CKA over max_blocks(1 - CKA) (what the relative rule
reads), and relative weight drift (0 = unchanged); mean ± std over seeds. Entries the fitted rule
advises freezing in most seeds are blue. Drawn from analyses/results/runs/*comparison.json and
rule.json only."""

from __future__ import annotations

import glob
import os

import _common as C
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from layerprobe.freezing.rule import Thresholds, recommend


def main() -> None:
    a = C.parse("fig_block_change", __doc__)
    rule = C.read_json(os.path.join(a.results, "rule.json"))
    t = Thresholds(**rule["thresholds"])
    rows, advised = [], {}
    for path in sorted(glob.glob(os.path.join(a.results, "runs", "*_full_full_*comparison.json"))):
        task = os.path.basename(path).split("_")[0]
        c = C.read_json(path)
        top = max(1 - e["cka"] for e in c["blocks"] if e["kind"] == "block")
        for e in c["blocks"]:
            rows.append({"task": task, "file": path, "name": e["name"], "cka": e["cka"],
                         "relative_change": (1 - e["cka"]) / top if top > 0 else float("nan"),
                         "weight_drift": e["weight_drift"]})
        advised.setdefault(task, []).append(len(recommend(c["blocks"], t).freeze))
    df = pd.DataFrame(rows)
    tasks = C.task_order(df.task)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        d = df[df.task == task]
        names = list(dict.fromkeys(d.name))
        n_frozen = max(set(advised[task]), key=advised[task].count)
        colors = ["#4C72B0" if i < n_frozen else "#DD8452" for i in range(len(names))]
        for ax, metric, label in ((row[0], "cka", "linear CKA base vs tuned"),
                                  (row[1], "relative_change", "(1 − CKA) / top block's (1 − CKA)"),
                                  (row[2], "weight_drift", "relative weight drift ‖ΔW‖/‖W₀‖")):
            sns.barplot(data=d, x="name", y=metric, order=names, hue="name", hue_order=names, palette=colors,
                        errorbar="sd", capsize=0.2, legend=False, ax=ax)
            ax.set_xlabel("")
            ax.set_ylabel(label, fontsize=9)
            ax.tick_params(axis="x", rotation=30)
        if t.max_relative_change is not None:
            row[1].axhline(t.max_relative_change, color="black", ls=":", lw=1.2,
                           label=f"rule: ≤ {t.max_relative_change:g}")
            row[1].legend(fontsize=8)
        if t.min_cka is not None:
            row[0].axhline(t.min_cka, color="black", ls=":", lw=1.2, label=f"rule: ≥ {t.min_cka:g}")
            row[0].legend(fontsize=8, loc="lower left")
        n = d.file.nunique()
        row[0].set_title(f"{C.TASK_TITLES.get(task, task)}: blue = advised frozen, {n} seed{'s' if n > 1 else ''}",
                         fontsize=10, loc="left")
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
