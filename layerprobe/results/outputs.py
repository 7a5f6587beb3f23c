"""The files ``compare --out DIR`` writes: a comparison's output set (a series adds its trajectory).

Written with :func:`~layerprobe.io.outputs.write_output_set`: the files appear together, or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from layerprobe.io.outputs import atomic_write_text, write_output_set
from layerprobe.options import CSV_OPTIONS
from layerprobe.results.trajectory import SERIES_FILE

if TYPE_CHECKING:
    from layerprobe.results.comparison import Comparison

__all__ = ["COMPARISON_FILES", "OUTPUT_FILES", "SERIES_FILES", "write_comparison"]

#: what a comparison writes (the cross-layer files only with a cross-layer map)
COMPARISON_FILES = ("comparison.json", "comparison.csv", "groups.csv", "blocks.png", "cross_layer.csv",
                    "cross_layer.png")
#: what a checkpoint series writes
SERIES_FILES = (SERIES_FILE, "comparison.json", "trajectory.png")
#: every file ``compare --out DIR`` may write (a comparison, or a checkpoint series)
OUTPUT_FILES = (*COMPARISON_FILES, SERIES_FILE, "trajectory.png")


def _text(text: str) -> Callable[[str], object]:
    return lambda path: atomic_write_text(path, text)


def write_comparison(result: Comparison, out: str | os.PathLike) -> list[str]:
    """Write a comparison's files into ``out`` (JSON, CSV tables, the figure; cross-layer files when
    the comparison has a map)."""
    from layerprobe.results.plots import plot_blocks, plot_cross_layer
    from layerprobe.results.render import cross_layer_csv, to_csv

    doc = result.to_dict()
    writers: dict[str, Callable[[str], object]] = {
        "comparison.json": _text(result.to_json()),
        "comparison.csv": _text(to_csv(result)),
        "groups.csv": _text(result.groups_frame().to_csv(**CSV_OPTIONS)),
        "blocks.png": lambda path: plot_blocks(doc, path),
    }
    if result.cross_layer is not None:
        writers["cross_layer.csv"] = _text(cross_layer_csv(doc))
        writers["cross_layer.png"] = lambda path: plot_cross_layer(doc, path)
    return write_output_set(out, writers)
