"""A checkpoint series after the fact: ``layerprobe compare BASE CKPT1 CKPT2 ... --out DIR``.

A Trainer run leaves ``checkpoint-500/``, ``checkpoint-1000/``, ...; :func:`compare_series`
compares each later input with the first and with the one before it, and writes the callback's
trajectory columns (``step, block, cka_to_start, cka_to_previous, weight_drift``) to
``DIR/trajectory.csv`` plus ``DIR/trajectory.png``. Each model runs once over the probe: one
side is resolved per input and at most three are held (base, previous, current).

The final comparison (the last input against the first) carries the series in ``meta.series``: every
input, its step and the trajectory rows, so the JSON alone holds the whole result (``--format json``).

``step`` comes from a ``checkpoint-N`` name, else from ``trainer_state.json`` (``global_step``),
else the input's position in the series. A run directory given as one argument (no weights of
its own, ``checkpoint-N`` folders inside) expands to its checkpoints in step order. The inputs
after the base are put in step order whatever order they were given in (``300 100 200`` is read
as ``100 200 300``); the same step twice, a step before the base's, or inputs of which only some
have a step are refused before any model is read (:func:`order_by_step`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

from layerprobe.errors import LayerProbeError
from layerprobe.io.trainer_state import run_progress
from layerprobe.results.trajectory import REQUIRED, SERIES_FILE

__all__ = ["SERIES_COLUMNS", "TRAJECTORY_FILE", "checkpoint_step", "compare_series", "expand_inputs",
           "order_by_step", "series_csv", "write_series"]

SERIES_COLUMNS = REQUIRED  # a series has exactly the columns every trajectory file has
TRAJECTORY_FILE = SERIES_FILE
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike, position: int) -> int:
    """The training step of a series input: ``checkpoint-N`` -> N, else ``global_step``, else ``position``."""
    p = os.fspath(path).rstrip("/\\")
    m = _CKPT.match(os.path.basename(p))
    if m:
        return int(m.group(1))
    prog = run_progress(p)
    return prog["step"] if prog else int(position)


def _known_step(path: Any) -> int | None:
    """The step a series input names (``checkpoint-N`` or ``trainer_state.json``), else None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    p = os.fspath(path).rstrip("/\\")
    m = _CKPT.match(os.path.basename(p))
    if m:
        return int(m.group(1))
    prog = run_progress(p)
    return prog["step"] if prog else None


def _name(p: Any, i: int) -> str:
    return os.fspath(p) if isinstance(p, (str, os.PathLike)) else f"input {i}"


def order_by_step(paths: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """``(inputs, steps)`` with the base first and the later inputs in step order.

    Steps come from :func:`checkpoint_step`. When no later input names a step they keep the order
    given (steps are their positions).

    Raises:
        LayerProbeError: two inputs at the same step (including the base's), a later input at a
            step before the base's, or later inputs of which only some name a step (no order).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> ins = [os.path.join(d, "base")] + [os.path.join(d, f"checkpoint-{n}") for n in (300, 100, 200)]
    >>> [os.path.basename(p) for p in order_by_step(ins)[0]], order_by_step(ins)[1]
    (['base', 'checkpoint-100', 'checkpoint-200', 'checkpoint-300'], [0, 100, 200, 300])
    >>> order_by_step(ins + [os.path.join(d, "again", "checkpoint-200")])
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: ...checkpoint-200: step 200 is in the series twice (also ...checkpoint-200); one input per step
    """
    paths = list(paths)
    base_step = _known_step(paths[0]) or 0
    later = [(_known_step(p), i, p) for i, p in enumerate(paths[1:], start=1)]
    known = [(s, i, p) for s, i, p in later if s is not None]
    if not known:
        return paths, [base_step] + [i for _, i, _ in later]
    if len(known) < len(later):
        _, i, p = next(x for x in later if x[0] is None)
        raise LayerProbeError("no training step for this series input (no checkpoint-N name, no trainer_state.json) "
                              "while other inputs have one: the series cannot be put in step order", _name(p, i))
    seen: dict[int, Any] = {base_step: (0, paths[0])}
    for step, i, p in sorted(known, key=lambda x: (x[0], x[1])):
        if step in seen:
            j, q = seen[step]
            raise LayerProbeError(f"step {step} is in the series twice (also {_name(q, j)}); one input per step",
                                  _name(p, i))
        if step < base_step:
            raise LayerProbeError(f"step {step} is before the base's step {base_step} (the first input is the base "
                                  "of the series)", _name(p, i))
        seen[step] = (i, p)
    ordered = sorted(known, key=lambda x: x[0])
    return [paths[0]] + [p for _, _, p in ordered], [base_step] + [int(s) for s, _, _ in ordered]


def _is_run_dir(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    own = ("config.json", "adapter_config.json", "model.safetensors", "pytorch_model.bin",
           "model.safetensors.index.json", "pytorch_model.bin.index.json")
    if any(os.path.exists(os.path.join(path, n)) for n in own):
        return False
    return any(_CKPT.match(n) for n in os.listdir(path))  # a broken checkpoint-N is refused, not skipped


def _checkpoint_dir(path: str) -> str:
    """``path`` (a ``checkpoint-N`` entry of a run directory) if it is a readable directory; else a
    one-line error naming it (a dangling link, a link loop, a file): never skipped silently."""
    from layerprobe.io.files import check_exists

    check_exists(path, "checkpoint", missing="checkpoint not found")
    if not os.path.isdir(path):
        raise LayerProbeError("named like a checkpoint but not a directory; expected a checkpoint directory "
                              "of the run (move or rename it)", path)
    if not os.access(path, os.R_OK | os.X_OK):
        raise LayerProbeError("cannot read checkpoint directory: permission denied", path)
    return path


def expand_inputs(paths: Sequence[Any]) -> list[Any]:
    """Replace each run directory by its ``checkpoint-N`` folders in step order; others stay.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> for n in (1000, 500, 1500): os.makedirs(os.path.join(d, f"checkpoint-{n}"))
    >>> [os.path.basename(p) for p in expand_inputs([d])]
    ['checkpoint-500', 'checkpoint-1000', 'checkpoint-1500']
    """
    out: list[Any] = []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and _is_run_dir(os.fspath(p)):
            d = os.fspath(p)
            found = [(int(m.group(1)), _checkpoint_dir(os.path.join(d, n))) for n in sorted(os.listdir(d))
                     if (m := _CKPT.match(n))]
            out.extend(path for _, path in sorted(found))
        else:
            out.append(p)
    return out


def compare_series(
    inputs: Sequence[Any],
    probe: Sequence[str] | str | os.PathLike | None = None,
    tokenizer: Any = None,
    *,
    out: str | os.PathLike | None = None,
    text_column: str = "text",
    max_examples: int | None = None,
    snapshot_kwargs: dict | None = None,
    anatomy: bool = False,
    progress: bool = False,
    title: str | None = None,
) -> tuple[Any, list[dict]]:
    """Compare every later input of a series with the first (and with the one before it).

    Args:
        inputs: base first, then checkpoints (paths, snapshots or models; run directories expand).
        probe: probe texts or a probe file; without one, CKA columns are NaN (drift only).
        tokenizer: for model objects without their own.
        out: folder for ``trajectory.csv``, ``trajectory.png`` and ``comparison.json`` (the last
            input against the base, with its advice); nothing is written if None.
        snapshot_kwargs: probe settings (pooling, max_length, ..., device, dtype, block overrides).
        anatomy: per-group drift in the final comparison.
        progress: progress bars.

    Returns:
        ``(final Comparison, trajectory rows)``; rows have :data:`SERIES_COLUMNS`.
    """
    from layerprobe.comparison.compare import compare_sides
    from layerprobe.comparison.sides import read_probe, resolve_side
    from layerprobe.metrics.cka import linear_cka
    from layerprobe.options import CKAOptions

    paths = expand_inputs(list(inputs))
    if len(paths) < 2:
        raise LayerProbeError(f"a series needs a base and at least one checkpoint; got {len(paths)} input(s)")
    paths, steps = order_by_step(paths)  # before anything is read: the same step twice is refused here
    texts = read_probe(probe, text_column, max_examples)
    kw = {**(snapshot_kwargs or {}), "progress": progress}
    base = resolve_side(paths[0], texts, tokenizer, kw, label=None if isinstance(paths[0], (str, os.PathLike)) else "0")
    names = base.names
    rows = [{"step": steps[0], "block": n, "cka_to_start": 1.0 if base.representations else math.nan,
             "cka_to_previous": math.nan, "weight_drift": 0.0} for n in names]
    prev, final = base, None
    for i, p in enumerate(paths[1:], start=1):
        cur = resolve_side(p, texts, tokenizer, kw, label=None if isinstance(p, (str, os.PathLike)) else str(i))
        last = i == len(paths) - 1
        final = compare_sides(base, cur, anatomy=anatomy and last,
                              cka_options=CKAOptions(ci=None if last else False))
        by = {e["name"]: e for e in final.blocks}
        both = bool(prev.representations and cur.representations)
        for n in names:
            rows.append({"step": steps[i], "block": n,
                         "cka_to_start": by[n]["cka"] if by[n]["cka"] is not None else math.nan,
                         "cka_to_previous": linear_cka(prev.representations[n], cur.representations[n]) if both
                         else math.nan,
                         "weight_drift": by[n]["weight_drift"]})
        if prev is not base:
            del prev
        prev = cur
    assert final is not None
    final.meta["series"] = {"inputs": [os.fspath(p) if isinstance(p, (str, os.PathLike)) else str(i)
                                       for i, p in enumerate(paths)], "steps": steps,
                            "trajectory": [dict(r) for r in rows]}  # trajectory.csv's rows, in the JSON too
    if out is not None:
        write_series(rows, final, out, title=title)
    return final, rows


def series_csv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(SERIES_COLUMNS)).to_csv(index=False, float_format="%.10g",
                                                                    lineterminator="\n")


def write_series(rows: list[dict], final: Any, out: str | os.PathLike, title: str | None = None) -> list[str]:
    """Write ``trajectory.csv``, ``comparison.json`` and ``trajectory.png`` into ``out``: the three
    files appear together, or not at all (the one output-set writer)."""
    import pandas as pd

    from layerprobe.io.outputs import atomic_write_text, write_output_set
    from layerprobe.results.trajectory import plot_trajectory

    csv, doc = series_csv(rows), final.to_json()
    return write_output_set(os.path.abspath(os.fspath(out)), {
        TRAJECTORY_FILE: lambda path: atomic_write_text(path, csv),
        "comparison.json": lambda path: atomic_write_text(path, doc),
        "trajectory.png": lambda path: plot_trajectory(pd.DataFrame(rows), path, title=title),
    })
