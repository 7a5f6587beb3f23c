"""Draw a training trajectory (``layerprobe_trajectory.csv``) — from the CSV only, never a model."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from layerprobe.errors import LayerProbeError, one_line
from layerprobe.io.files import read_bounded

if TYPE_CHECKING:  # pandas and numpy are imported when a file is read or drawn
    import pandas as pd

__all__ = ["COLUMNS", "REQUIRED", "SERIES_FILE", "TRAJECTORY_CSV", "plot_trajectory", "read_trajectory"]

#: the file a training run's tracker writes (``LayerProbeCallback`` / ``Tracker.write_csv``)
TRAJECTORY_CSV = "layerprobe_trajectory.csv"
#: the file ``layerprobe compare BASE CKPT1 CKPT2 ... --out DIR`` writes
SERIES_FILE = "trajectory.csv"
#: the columns every trajectory file has (a checkpoint series has exactly these)
REQUIRED = ("step", "block", "cka_to_start", "cka_to_previous", "weight_drift")
#: the columns of a tracked run's trajectory, in order
COLUMNS = (
    "step", "block", "cka_to_start", "cka_to_previous", "change", "weight_drift", "frozen",
    "track_seconds", "track_seconds_total", "lr_sum",
)


#: the largest trajectory file read (a run of 10,000 checks over 100 entries writes about 100 MB)
MAX_TRAJECTORY_BYTES = 256 << 20


def read_trajectory(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a trajectory CSV (a file, or a run directory that holds one).

    Raises:
        LayerProbeError: no such file, not a regular file, larger than :data:`MAX_TRAJECTORY_BYTES`,
            unreadable, missing columns or no rows, values out of range, or one step twice for an entry.
            Rows are returned in step order (stable).
    """
    import io

    import numpy as np
    import pandas as pd

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, TRAJECTORY_CSV)
    if not os.path.isfile(path):
        raise LayerProbeError(f"no trajectory file (expected {TRAJECTORY_CSV} from LayerProbeCallback/Tracker)",
                              path)
    data = read_bounded(path, MAX_TRAJECTORY_BYTES, "trajectory CSV")  # a FIFO or a huge file: one line, no hang
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LayerProbeError(f"cannot read the trajectory CSV: {one_line(exc, 200)}", path) from None  # pandas ends some with a newline
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise LayerProbeError(f"trajectory CSV lacks columns {missing}; found {one_line(list(df.columns), 300)}", path)
    if df.empty:
        raise LayerProbeError("trajectory CSV has no rows", path)
    for c in ("step", "cka_to_start", "weight_drift"):
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):  # True is not step 1
            raise LayerProbeError(f"trajectory column {c!r} is not numeric", path)
    # values a trajectory can hold (the plot's axis arithmetic overflows on 1e308 and the like)
    checks = (("step", lambda v: v.notna() & np.isfinite(v) & (v >= 0) & (v < 2.0 ** 63), "finite steps >= 0"),
              ("cka_to_start", lambda v: v.isna() | ((v >= -1 - 1e-6) & (v <= 1 + 1e-6)), "CKA values in [-1, 1] or empty"),
              ("weight_drift", lambda v: v.isna() | (v >= 0), "drift values >= 0 or empty"))
    for c, ok, what in checks:
        bad = ~ok(df[c].astype(float))
        if bool(bad.any()):
            row = int(bad.to_numpy().argmax())
            value = df[c].iloc[row]
            value = value.item() if hasattr(value, "item") else value
            raise LayerProbeError(f"trajectory column {c!r} must hold {what}; data row {row + 1} has {value!r}", path)
    twice = df.duplicated(["step", "block"], keep=False)
    if bool(twice.any()):  # two values for one point: a series given the same checkpoint twice, or two runs mixed
        rows = [int(r) + 1 for r in twice.to_numpy().nonzero()[0][:2]]
        step, block = df["step"].iloc[rows[0] - 1], df["block"].iloc[rows[0] - 1]
        step = step.item() if hasattr(step, "item") else step
        raise LayerProbeError(f"trajectory has step {step} twice for {block!r} (data rows {rows[0]} and {rows[1]}); "
                              "one row per step and entry", path)
    return df.sort_values("step", kind="stable").reset_index(drop=True)  # rows given out of order are drawn in order


def plot_trajectory(df: pd.DataFrame, path: str | os.PathLike | None = None, title: str | None = None, *,
                    ax: Any = None) -> Any:
    """Per-entry CKA to the start (left) and weight drift from the start (right) over steps.

    Entries keep the model order of the CSV (embeddings first), each in its own qualitative colour
    so neighbouring blocks are told apart; a dotted line labelled "<entry> frozen" marks the step
    each entry froze. ``ax``: two axes to draw into. Returns the figure; ``path`` also writes a PNG
    (atomically). The global matplotlib style is left alone.
    """
    import warnings

    import seaborn as sns
    from matplotlib.figure import Figure

    from layerprobe.results.plots import cka_limits, save_figure

    order = list(dict.fromkeys(df["block"]))
    colours = sns.color_palette("tab10" if len(order) <= 10 else "tab20", len(order))
    palette = dict(zip(order, colours))
    if ax is None:
        fig = Figure(figsize=(11, 4.4), layout="constrained")
        axes = list(fig.subplots(1, 2))
    else:
        axes = list(getattr(ax, "flat", ax))
        fig = axes[0].figure
    for name in order:
        d = df[df["block"] == name].sort_values("step")
        axes[0].plot(d["step"], d["cka_to_start"], marker="o", ms=3, color=palette[name], label=name)
        axes[1].plot(d["step"], d["weight_drift"], marker="o", ms=3, color=palette[name], label=name)
    axes[0].set_ylim(*cka_limits(list(df["cka_to_start"].astype(float))))
    if "frozen" in df.columns:
        first = df[df["frozen"].astype(str).str.lower() == "true"].groupby("block")["step"].min()
        by_step: dict[int, list[str]] = {}
        for name in order:  # model order: "embeddings..block.1 frozen"
            if name in first.index and first[name] > df["step"].min():
                by_step.setdefault(int(first[name]), []).append(str(name))
        for step, names in sorted(by_step.items()):
            for a in axes:
                a.axvline(step, color="#444444", ls=":", lw=1)
            label = (", ".join(names) if len(names) <= 2 else f"{names[0]}..{names[-1]}") + " frozen"
            axes[0].annotate(label, xy=(step, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                             textcoords="offset points", ha="left", va="bottom", fontsize=8, color="#444444",
                             bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
    axes[0].set(xlabel="step", ylabel="linear CKA to start (1 = unchanged)", title="representation")
    axes[1].set(xlabel="step", ylabel="‖W − W₀‖ / ‖W₀‖ (0 = unchanged)", title="weight drift")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for a in axes:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        with warnings.catch_warnings():  # many entries: the legend may not fit; the figure is still written
            warnings.simplefilter("ignore", UserWarning)
            save_figure(fig, path)
    return fig
