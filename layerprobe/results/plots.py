"""Figures drawn from saved results only (a comparison JSON dict), never from models.

Every plot function returns a :class:`matplotlib.figure.Figure`, draws into ``ax=`` when given,
leaves the global matplotlib and seaborn style alone (no ``set_theme``, no backend switch: a
notebook shows the figure inline), and writes a file only when ``path=`` is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from layerprobe.io.outputs import atomic_write
from layerprobe.results.rows import entry_rows

__all__ = ["ADVICE_COLOURS", "MAX_CROSS_LAYER_NAMES", "blocks_frame", "cka_limits", "cross_layer_problem",
           "plot_blocks", "plot_cross_layer", "plot_tradeoff", "save_figure"]

#: advice colours (colour-blind safe): freeze blue, train orange
ADVICE_COLOURS = {True: "#0072B2", False: "#E69F00"}


def blocks_frame(result: dict) -> pd.DataFrame:
    """Per-entry rows from a comparison dict (``Comparison.to_dict()`` or the saved JSON), indexed by entry name."""
    keep = ("name", "cka", "cka_low", "cka_high", "weight_drift", "frozen")
    rows = entry_rows(result["blocks"], result["recommendation"]["freeze"])
    df = pd.DataFrame([{k: r[k] for k in keep} for r in rows], columns=list(keep))  # the columns also with no rows
    for c in ("cka", "cka_low", "cka_high", "weight_drift"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df.set_index("name")


def save_figure(fig: Any, path: str | os.PathLike, close: bool = False) -> str:
    """Save a figure atomically as PNG; ``close=True`` also closes it (scripts, not notebooks)."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return os.fspath(path)


def cka_limits(values: Sequence[float], threshold: float | None = None) -> tuple[float, float]:
    """A CKA axis that separates the values that matter: from a little below the lowest value (or
    the threshold) to just above 1, so 0.97 and 1.0 do not look alike.

    >>> cka_limits([0.97, 0.995, 1.0], 0.99)
    (0.9655, 1.0015)
    """
    finite = [float(v) for v in values if v is not None and v == v]
    low = min(finite + ([threshold] if threshold is not None else []) + [1.0])
    span = max(1.0 - low, 0.01)
    return round(max(0.0, low - 0.15 * span), 4), round(1.0 + 0.05 * span, 4)


def _axes(ax: Any, n: int, figsize: tuple[float, float]) -> tuple[Any, list[Any]]:
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
        return fig, list(fig.subplots(1, n)) if n > 1 else [fig.subplots()]
    axes = list(ax) if isinstance(ax, (list, tuple)) or hasattr(ax, "flat") else [ax]
    axes = list(getattr(ax, "flat", axes))
    return axes[0].figure, axes


def plot_blocks(result: dict, path: str | os.PathLike | None = None, title: str | None = None, *,
                ax: Any = None) -> Any:
    """Per-entry CKA (base vs tuned, with its interval) and relative weight drift, advice coloured; and,
    when the advice has predictions (``recommendation.candidates``), the trade-off per bottom prefix
    (:func:`plot_tradeoff`).

    Args:
        result: a comparison dict (``Comparison.to_dict()`` or the saved JSON).
        path: write a PNG there too (atomically); the figure stays open.
        title: figure title.
        ax: draw into these axes: three (CKA, drift, trade-off), two (CKA, drift), or one (CKA only;
            drift without CKA). Default: a new figure of two panels, three with predictions.

    Returns:
        the :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    df = blocks_frame(result)
    tradeoff = _has_predictions(result)
    fig, axes = _axes(ax, 3, (16, 4)) if tradeoff and ax is None else _axes(ax, 2, (11, 4))
    if len(axes) > 2:
        plot_tradeoff(result, ax=axes[2])
        axes = axes[:2]
    colours = [ADVICE_COLOURS[bool(f)] for f in df["frozen"]]
    x = list(range(len(df)))
    thr = result["recommendation"]["thresholds"].get("min_cka")
    thr = float(thr) if isinstance(thr, (int, float)) and 0.0 <= thr <= 1.0 else None  # a saved file may hold any number
    has_cka = bool(df["cka"].notna().any())
    panels = axes if len(axes) > 1 else axes[:1]
    handles: list[Any] = [Patch(color=ADVICE_COLOURS[True], label="advice: freeze"),
                          Patch(color=ADVICE_COLOURS[False], label="advice: train")]
    if has_cka:
        a = panels[0]
        if df["cka_low"].notna().any():
            err = [(df["cka"] - df["cka_low"]).clip(lower=0), (df["cka_high"] - df["cka"]).clip(lower=0)]
            a.errorbar(x, df["cka"], yerr=err, fmt="none", ecolor="#555555", capsize=4, lw=1.2, zorder=2)
            handles.append(Line2D([], [], color="#555555", marker="|", ls="none", markersize=10,
                                  label=_interval_label(result)))
        a.scatter(x, df["cka"], c=colours, s=60, zorder=3, edgecolors="black", linewidths=0.5)
        if thr is not None:
            a.axhline(thr, color="#CC3311", ls="--", lw=1.2, zorder=1)
        lim = cka_limits(list(df["cka_low"].fillna(df["cka"])) + list(df["cka"]), thr)
        if thr is not None:  # the label below the line when the line sits in the top fifth (it would touch the edge)
            below = thr > lim[1] - 0.2 * (lim[1] - lim[0])
            a.annotate(f"min CKA {thr}", xy=(0.0, thr), xycoords=("axes fraction", "data"), xytext=(4, -3 if below else 3),
                       textcoords="offset points", ha="left", va="top" if below else "bottom", color="#CC3311",
                       fontsize=9)
        a.set_ylim(*lim)
        a.set_ylabel("linear CKA, base vs tuned\n(1 = unchanged)")
        a.set_title("representation", fontsize=10)
        a.grid(axis="y", alpha=0.3)
        drift_ax = panels[1] if len(panels) > 1 else None
    else:
        drift_ax = panels[1] if len(panels) > 1 else panels[0]
        if len(panels) > 1:
            panels[0].text(0.5, 0.5, "CKA not computed", ha="center", va="center", transform=panels[0].transAxes)
            panels[0].set_axis_off()
    if drift_ax is not None:
        drift_ax.bar(x, df["weight_drift"], color=colours, edgecolor="black", linewidth=0.5)
        drift_ax.set_ylabel("relative weight drift\n‖ΔW‖/‖W₀‖ (0 = unchanged)")
        drift_ax.set_title("weights", fontsize=10)
        drift_ax.grid(axis="y", alpha=0.3)
    for a in panels:
        if a.axison:
            a.set_xticks(x)
            a.set_xticklabels(list(df.index), rotation=45, ha="right")
    fig.legend(handles=handles, loc="outside lower center" if ax is None else "lower center", ncol=len(handles),
               frameon=False)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def _interval_label(result: dict) -> str:
    level = (result["meta"].get("ci") or {}).get("level", 0.95)
    return f"{round(100 * level)}% interval" if isinstance(level, (int, float)) and 0 < level < 1 else "interval"


def _has_predictions(result: dict) -> bool:
    rows = (result.get("recommendation") or {}).get("candidates") or []
    return any(r.get("predicted_rel_acc") is not None and r["predicted_rel_acc"] == r["predicted_rel_acc"] for r in rows)


def plot_tradeoff(result: dict, path: str | os.PathLike | None = None, title: str | None = None, *,
                  ax: Any = None) -> Any:
    """The advice as a trade-off: for each bottom prefix (``recommendation.candidates``), the predicted
    accuracy relative to full fine-tuning (with its interval) against the share of a training epoch's
    compute it saves; the tolerance line and the advised prefix marked.

    Args:
        result: a comparison dict with ``recommendation.candidates`` (schema 2).
        path: write a PNG there too (atomically).
        title: axes title (default: the predictor used).
        ax: draw into these axes (default: a new figure).

    Returns:
        the :class:`matplotlib.figure.Figure`.
    """
    from layerprobe.errors import LayerProbeError

    rec = result.get("recommendation") or {}
    rows = [r for r in rec.get("candidates") or [] if r.get("predicted_rel_acc") is not None
            and r["predicted_rel_acc"] == r["predicted_rel_acc"]]
    if not rows:
        raise LayerProbeError("plot_tradeoff: the comparison has no predictions (recommendation.candidates is empty: "
                              "no CKA or drift to predict from, or written before schema 2)")
    fig, axes = _axes(ax, 1, (5.5, 4))
    a = axes[0]
    freeze = list(rec.get("freeze") or [])
    xs = [100 * float(r["compute_saved"]) if r.get("compute_saved") is not None else math.nan for r in rows]
    ys = [100 * float(r["predicted_rel_acc"]) for r in rows]
    ends = [[y / 100 if v is None else float(v) for v in r["interval"]] for y, r in zip(ys, rows)]  # null: no bar
    lo = [max(0.0, y - 100 * e[0]) for y, e in zip(ys, ends)]
    hi = [max(0.0, 100 * e[1] - y) for y, e in zip(ys, ends)]
    advised = [list(r["freeze"]) == freeze for r in rows]
    colours = [ADVICE_COLOURS[bool(r.get("within_tolerance"))] for r in rows]
    a.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="#555555", capsize=3, lw=1, zorder=2)
    a.plot(xs, ys, color="#999999", lw=0.8, zorder=1)
    a.scatter(xs, ys, c=colours, s=[140 if adv else 50 for adv in advised], zorder=3, edgecolors="black",
              linewidths=[2.0 if adv else 0.5 for adv in advised])
    for x, y, r in zip(xs, ys, rows):
        n = len(r["freeze"]) - 1
        a.annotate("emb" if n == 0 else f"emb+{n}", (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    tol = rec.get("tolerance")
    if tol is not None:
        a.axhline(100 * (1 - float(tol)), color="#CC3311", ls="--", lw=1.2)
        a.annotate(f"tolerance {100 * float(tol):g}%", xy=(0.0, 100 * (1 - float(tol))),
                   xycoords=("axes fraction", "data"), xytext=(4, -3), textcoords="offset points", ha="left",
                   va="top", color="#CC3311", fontsize=9)
    a.set_xlabel("compute saved per epoch (%), prefix frozen and cached")
    a.set_ylabel("predicted accuracy (% of full fine-tuning)")
    pred = rec.get("predictor") or {}
    fit = f", fit on {', '.join(pred.get('fit_on') or [])}" if pred.get("fit_on") else ""
    fit += "; advice on the interval's lower end" if pred.get("decide") == "upper" else ""
    a.set_title(title or f"trade-off per bottom prefix ({pred.get('name', '?')}{fit}; ringed: advised)", fontsize=10)
    a.grid(alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig


#: most entries ``layerprobe show --plot-cross-layer`` draws a map of (0.35 inch each, three panels: at 256
#: about 33,000 x 11,000 pixels; a file naming thousands asked for more memory than the machine had)
MAX_CROSS_LAYER_NAMES = 256


def cross_layer_problem(x: Any, max_names: int | None = None) -> str | None:
    """Why a comparison's ``cross_layer`` cannot be drawn, or None: it needs at least one name (at most
    ``max_names``) and three maps of one row and one column per name, of numbers or nulls.

    >>> cross_layer_problem({"names": ["a", "b"], "base_vs_tuned": [[1, 0.5], [0.5]], "base": [], "tuned": []})
    "its cross-layer map 'base_vs_tuned' is not 2 x 2 (a row and a column per name)"
    """
    names = x.get("names") if isinstance(x, dict) else None
    if not isinstance(names, list) or not names:
        return "its cross-layer map names no entries"
    n = len(names)
    if max_names is not None and n > max_names:
        return f"its cross-layer map has {n:,} entries, more than the {max_names:,} drawn"
    for key in ("base_vs_tuned", "base", "tuned"):
        m = x.get(key)
        if not isinstance(m, list) or len(m) != n or any(not isinstance(r, list) or len(r) != n for r in m):
            return f"its cross-layer map {key!r} is not {n} x {n} (a row and a column per name)"
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for r in m for v in r):
            return f"its cross-layer map {key!r} holds a value that is neither a number nor null"
    return None


def plot_cross_layer(result: dict, path: str | os.PathLike | None = None, title: str | None = None, *,
                     ax: Any = None) -> Any:
    """Three heatmaps from a comparison dict's ``"cross_layer"``: A vs B, within A, within B.

    Drawn from the saved result only (``Comparison.to_dict()`` or the JSON); undefined cells
    (null) are left blank. ``ax``: three axes to draw into. Returns the figure; ``path`` also
    writes a PNG.
    """
    import numpy as np
    import seaborn as sns

    x = result["cross_layer"]
    problem = cross_layer_problem(x)
    if problem is not None:  # before: a ragged map drawn silently wrong, or a ValueError from numpy
        from layerprobe.errors import LayerProbeError

        raise LayerProbeError(f"cannot draw the cross-layer map: {problem}")
    names = x["names"]
    panels = [("base_vs_tuned", "base (rows) vs tuned (columns)"), ("base", "within base"),
              ("tuned", "within tuned")]
    size = max(3.5, 0.35 * len(names) + 1.5)
    fig, axes = _axes(ax, 3, (3 * size + 1.5, size))
    for ax, (key, label) in zip(axes, panels):
        m = np.array([[np.nan if v is None else v for v in row] for row in x[key]], dtype=float)
        sns.heatmap(m, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis", square=True, cbar=key == "tuned",
                    xticklabels=names, yticklabels=names if key == "base_vs_tuned" else False,
                    cbar_kws={"label": "linear CKA (1 = same)"} if key == "tuned" else None)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=90)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig
