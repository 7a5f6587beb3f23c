"""When the same-run auto freeze (AutoFreezePolicy + prefix cache) froze, as a fraction of the run's optimizer
steps: one row per task and seed (its accuracy relative to the same seed's full fine-tuning), one point per
freeze event labelled with the frozen prefix after it. Drawn from analyses/results/summary.csv (freeze_steps)."""

from __future__ import annotations

import json

import _common as C
import matplotlib.pyplot as plt
import seaborn as sns

ENTRIES = ["embeddings"] + [f"block.{i}" for i in range(6)]


def _events(freeze_steps: dict[str, int]) -> list[tuple[int, str]]:
    """The run's freeze events as (step, the frozen prefix after it): ``emb``, ``emb+2``, ... in model order.

    >>> _events({"block.1": 30, "embeddings": 20, "block.0": 20})
    [(20, 'emb+1'), (30, 'emb+2')]
    """
    out = []
    for s in sorted(set(freeze_steps.values())):
        frozen = [n for n, at in freeze_steps.items() if at <= s]
        k = sum(n.startswith("block.") for n in frozen)
        out.append((s, ("emb" if "embeddings" in frozen else "") + (f"+{k}" if k else "") or f"{k} blocks"))
    return out


def main() -> None:
    a = C.parse("fig_auto_freeze", __doc__)
    df = C.summary(a.results)
    auto = df[df.method == "auto"]
    full = df[df.method == "full"].set_index(["task", "seed"]).accuracy
    sns.set_theme(style="whitegrid", context="notebook")
    rows = list(auto.sort_values(["task", "seed"], ascending=False).itertuples())
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.6))
    colors = sns.color_palette("viridis", len(ENTRIES))
    labels = []
    for i, r in enumerate(rows):
        steps = json.loads(r.freeze_steps) if isinstance(r.freeze_steps, str) and r.freeze_steps else {}
        rel = r.accuracy / full[(r.task, r.seed)] if (r.task, r.seed) in full.index else None
        labels.append(f"{r.task} seed {r.seed}" + (f" ({100 * rel:.1f}%)" if rel is not None else ""))
        events = _events(steps)
        xs = [s / r.steps for s, _ in events]
        ax.plot([0] + xs + [1], [i] * (len(xs) + 2), color="0.8", lw=1, zorder=1)
        for j, ((_s, name), x) in enumerate(zip(events, xs)):
            k = name.count("+") and int(name.split("+")[1])
            ax.scatter(x, i, color=colors[min(k, len(colors) - 1)], s=55, zorder=3)
            # consecutive labels alternate above and below the row, so close events stay readable
            ax.annotate(name, (x, i), fontsize=8, ha="center", textcoords="offset points",
                        xytext=(0, 6 if j % 2 == 0 else -13))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.8, len(labels) - 0.2)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the run's steps when the prefix froze (label: the frozen prefix after it)")
    ax.set_title("Same-run auto freeze: what froze when (accuracy vs full fine-tuning of the seed)"
                 if labels else "Same-run auto freeze (no auto runs yet)", fontsize=11)
    fig.tight_layout()
    C.save(fig, a.out)


if __name__ == "__main__":
    main()
