"""Per-block change after full fine-tuning: linear CKA base vs tuned (1 = unchanged) and relative
weight drift (0 = unchanged), mean ± std over seeds, with the default advice (min_cka 0.95) and the
calibrated one marked. Drawn from the saved comparison JSONs only."""

from __future__ import annotations

import os

import _common as C
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def main() -> None:
    a = C.parse("fig_block_change", __doc__)
    adv = C.read_json(os.path.join(a.results, "advice.json"))
    tasks = [t for t in C.tasks_in(a.results) if C.comparisons(a.results, t)]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        rows = [{"seed": i, "name": e["name"], "cka": e["cka"], "weight_drift": e["weight_drift"]}
                for i, c in enumerate(C.comparisons(a.results, task)) for e in c["blocks"]]
        df = pd.DataFrame(rows)
        names = list(dict.fromkeys(df["name"]))
        info = adv["tasks"][task]
        n_default = _n_frozen(info["default"]["config"])
        calib = info.get("calibrated")
        if calib and calib["min_cka"] == 0.95:
            calib = None  # the default was kept: nothing else to mark
        colors = ["#4C72B0" if i < n_default else "#DD8452" for i in range(len(names))]
        for ax, metric, label in ((row[0], "cka", "linear CKA base vs tuned (1 = unchanged)"),
                                  (row[1], "weight_drift", "relative weight drift ‖ΔW‖/‖W₀‖")):
            sns.barplot(data=df, x="name", y=metric, order=names, hue="name", hue_order=names, palette=colors,
                        errorbar="sd", capsize=0.2, legend=False, ax=ax)
            ax.set_xlabel("")
            ax.set_ylabel(label)
            ax.tick_params(axis="x", rotation=30)
        row[0].set_ylim(0, 1.05)
        row[0].axhline(0.95, color="grey", ls="--", lw=1, label="default min CKA 0.95")
        if calib:
            row[0].axhline(calib["min_cka"], color="black", ls=":", lw=1.2, label=f"calibrated min CKA {calib['min_cka']}")
            n_cal = _n_frozen(calib["config"])
            if n_cal:
                row[0].axvline(n_cal - 0.5, color="black", ls=":", lw=1.2)
        if n_default:
            row[0].axvline(n_default - 0.5, color="grey", ls="--", lw=1)
        row[0].legend(loc="lower left", fontsize=8)
        n = df["seed"].nunique()
        row[0].set_title(f"{C.TASK_TITLES.get(task, task)}: default advice {info['default']['config']} "
                         f"(blue = freeze), {n} seed{'s' if n > 1 else ''}", fontsize=10, loc="left")
    fig.tight_layout()
    C.save(fig, a.out)


def _n_frozen(config: str | None) -> int:
    """Entries frozen by a config name: full 0, emb 1, emb+k k+1."""
    if not config or config == "full":
        return 0
    return 1 if config == "emb" else 1 + int(config.split("+")[1])


if __name__ == "__main__":
    main()
