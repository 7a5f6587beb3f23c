"""Figures drawn from saved results only (a comparison JSON dict), never from models."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ._atomic import atomic_write  # noqa: E402


def blocks_frame(result: dict) -> pd.DataFrame:
    """Per-entry rows from a comparison dict (``Comparison.to_dict()`` or the saved JSON)."""
    freeze = set(result["recommendation"]["freeze"])
    rows = []
    for e in result["blocks"]:
        ci = e.get("cka_ci") or [None, None]
        rows.append({"name": e["name"], "cka": e.get("cka"), "cka_low": ci[0], "cka_high": ci[1],
                     "weight_drift": e["weight_drift"], "frozen": e["name"] in freeze})
    return pd.DataFrame(rows)


def save_figure(fig, path: str | os.PathLike) -> str:
    """Save a figure atomically as PNG and close it."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return os.fspath(path)


def plot_blocks(result: dict, path: str | os.PathLike, title: str | None = None) -> str:
    """Two panels: per-entry CKA (base vs tuned) and relative weight drift, advised freeze marked."""
    df = blocks_frame(result)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    palette = {True: "#4C72B0", False: "#DD8452"}
    x = range(len(df))
    ax = axes[0]
    if df["cka"].notna().any():
        ax.bar(x, df["cka"].fillna(0), color=[palette[f] for f in df["frozen"]])
        if df["cka_low"].notna().any():
            err = [df["cka"] - df["cka_low"], df["cka_high"] - df["cka"]]
            ax.errorbar(x, df["cka"], yerr=err, fmt="none", ecolor="black", capsize=3)
        thr = result["recommendation"]["thresholds"].get("min_cka")
        if thr is not None:
            ax.axhline(thr, color="grey", ls="--", lw=1, label=f"min CKA {thr}")
            ax.legend(loc="lower left")
        ax.set_ylim(0, 1.05)
    else:
        ax.text(0.5, 0.5, "CKA not computed", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("linear CKA, base vs tuned (1 = unchanged)")
    ax = axes[1]
    ax.bar(x, df["weight_drift"], color=[palette[f] for f in df["frozen"]])
    ax.set_ylabel("relative weight drift ‖ΔW‖/‖W₀‖")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(df["name"], rotation=45, ha="right")
    handles = [matplotlib.patches.Patch(color=palette[True], label="advice: freeze"),
               matplotlib.patches.Patch(color=palette[False], label="advice: train")]
    fig.legend(handles=handles, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.05))
    if title:
        fig.suptitle(title, y=1.1)
    return save_figure(fig, path)
