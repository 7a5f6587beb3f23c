"""When each entry froze in the same-run auto-freeze runs (AutoFreezePolicy + prefix cache), as a
fraction of the run's optimizer steps; one row of points per task and seed. Entries that never froze
are not drawn. Drawn from analyses/results/summary.csv (column freeze_steps)."""

from __future__ import annotations

import json

import _common as C
import matplotlib.pyplot as plt
import seaborn as sns

ENTRIES = ["embeddings"] + [f"block.{i}" for i in range(6)]


def main() -> None:
    a = C.parse("fig_auto_freeze", __doc__)
    df = C.summary(a.results)
    auto = df[df.method == "auto"]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labels = []
    for i, r in enumerate(auto.sort_values(["task", "seed"]).itertuples()):
        steps = json.loads(r.freeze_steps) if isinstance(r.freeze_steps, str) and r.freeze_steps else {}
        labels.append(f"{r.task} seed {r.seed}")
        at: dict[int, list[str]] = {}  # entries frozen at the same step share one label
        for n, s in steps.items():
            ax.scatter(s / r.steps, i, color=sns.color_palette("viridis", len(ENTRIES))[ENTRIES.index(n)]
                       if n in ENTRIES else "k", s=50, zorder=3)
            at.setdefault(s, []).append(n.replace("block.", "b").replace("embeddings", "emb"))
        for s, names in at.items():
            ax.annotate(", ".join(names), (s / r.steps, i), fontsize=7, xytext=(2, 4), textcoords="offset points")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the run's steps when the entry froze")
    ax.set_title("Same-run auto freeze: when each entry froze" + ("" if labels else " (no auto runs yet)"))
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
