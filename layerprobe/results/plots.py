"""Figures drawn from saved results only (a comparison JSON dict), never from models."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

__all__ = ["blocks_frame", "plot_blocks", "plot_cross_layer", "save_figure"]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from layerprobe.io.outputs import atomic_write  # noqa: E402
from layerprobe.results.rows import entry_rows  # noqa: E402


def blocks_frame(result: dict) -> pd.DataFrame:
    """Per-entry rows from a comparison dict (``Comparison.to_dict()`` or the saved JSON)."""
    keep = ("name", "cka", "cka_low", "cka_high", "weight_drift", "frozen")
    rows = entry_rows(result["blocks"], result["recommendation"]["freeze"])
    return pd.DataFrame([{k: r[k] for k in keep} for r in rows])


def save_figure(fig: Any, path: str | os.PathLike) -> str:
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
            # a percentile interval may sit just beside the point estimate (rounding, or CKA
            # near 1): draw the bar to the interval's end, never a negative length
            err = [(df["cka"] - df["cka_low"]).clip(lower=0), (df["cka_high"] - df["cka"]).clip(lower=0)]
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


def plot_cross_layer(result: dict, path: str | os.PathLike, title: str | None = None) -> str:
    """Three heatmaps from a comparison dict's ``"cross_layer"``: A vs B, within A, within B.

    Drawn from the saved result only (``Comparison.to_dict()`` or the JSON); undefined cells
    (null) are left blank.
    """
    import numpy as np

    x = result["cross_layer"]
    names = x["names"]
    panels = [("base_vs_tuned", "base (rows) vs tuned (columns)"), ("base", "within base"),
              ("tuned", "within tuned")]
    sns.set_theme(style="white", context="notebook")
    size = max(3.5, 0.35 * len(names) + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size + 1.5, size))
    for ax, (key, label) in zip(axes, panels):
        m = np.array([[np.nan if v is None else v for v in row] for row in x[key]], dtype=float)
        sns.heatmap(m, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis", square=True, cbar=key == "tuned",
                    xticklabels=names, yticklabels=names if key == "base_vs_tuned" else False,
                    cbar_kws={"label": "linear CKA (1 = same)"} if key == "tuned" else None)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=90)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
