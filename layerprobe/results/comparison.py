"""The result of a comparison and its JSON contract.

:class:`Comparison` holds the per-entry rows, the advice and the metadata; ``to_dict`` /
``to_json`` are the JSON contract (described by ``layerprobe/schema/comparison.schema.json``).
:func:`entry_rows` is the one place that turns entries into table rows, for the DataFrame, the
figures and the text report alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerprobe.freezing.rule import Recommendation
from layerprobe.results.schema import SCHEMA_VERSION

if TYPE_CHECKING:  # pandas is imported when a frame is asked for
    import pandas as pd

__all__ = ["Comparison", "entry_rows", "most_moved_group"]

#: the columns of :meth:`Comparison.to_frame` (and of ``comparison.csv``), in order
FRAME_COLUMNS = ("index", "name", "kind", "cka", "cka_low", "cka_high", "weight_drift", "weight_cosine",
                 "max_abs_change", "n_params", "advice", "reason")


def most_moved_group(entry: Mapping[str, Any]) -> str | None:
    """The parameter group with the largest relative drift, with its update's rank90 when known.

    >>> most_moved_group({"groups": {"attn.q": {"weight_drift": 0.1}, "ffn.out": {"weight_drift": 0.3, "rank90": 4}}})
    'ffn.out (rank90 4)'
    >>> most_moved_group({"groups": {}}) is None
    True
    """
    groups = entry.get("groups") or {}
    moved = {g: v.get("weight_drift") or 0.0 for g, v in groups.items()}
    if not moved or max(moved.values()) <= 0:
        return None
    top = max(moved, key=moved.__getitem__)
    if groups[top].get("rank90") is not None:  # LoRA-rank hint of its update
        top += f" (rank90 {groups[top]['rank90']})"
    return top


def entry_rows(blocks: Sequence[Mapping[str, Any]], freeze: Sequence[str],
               reasons: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One flat row per entry: the :data:`FRAME_COLUMNS` plus ``frozen`` and ``most_moved``.

    Works on :attr:`Comparison.blocks` and on the saved JSON's ``"blocks"`` alike.

    >>> rows = entry_rows([{"index": 0, "name": "block.0", "kind": "block", "cka": 0.9, "cka_ci": [0.8, 0.95],
    ...                     "weight_drift": 0.01, "weight_cosine": 1.0, "max_abs_change": 0.1, "n_params": 10}],
    ...                   freeze=["block.0"])
    >>> rows[0]["cka_low"], rows[0]["advice"], rows[0]["frozen"]
    (0.8, 'freeze', True)
    """
    frozen = set(freeze)
    reasons = reasons or {}
    rows = []
    for e in blocks:
        ci = e.get("cka_ci") or [None, None]
        rows.append({
            "index": e["index"], "name": e["name"], "kind": e["kind"],
            "cka": e.get("cka"), "cka_low": ci[0], "cka_high": ci[1],
            "weight_drift": e["weight_drift"], "weight_cosine": e["weight_cosine"],
            "max_abs_change": e["max_abs_change"], "n_params": e["n_params"],
            "advice": "freeze" if e["name"] in frozen else "train",
            "reason": reasons.get(e["name"], ""),
            "frozen": e["name"] in frozen,
            "most_moved": most_moved_group(e),
        })
    return rows


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class Comparison:
    """The result of :func:`compare`: per-entry measurements, advice and metadata."""

    blocks: list[dict]
    recommendation: Recommendation
    meta: dict
    other: dict | None = None
    cross_layer: dict | None = None

    def to_dict(self) -> dict:
        d = {"schema_version": SCHEMA_VERSION, "blocks": self.blocks,
             "recommendation": self.recommendation.to_dict(), "meta": self.meta}
        if self.other is not None:
            d["other"] = self.other
        if self.cross_layer is not None:
            d["cross_layer"] = self.cross_layer
        return _nan_to_none(d)

    def __repr__(self) -> str:
        """The readable table and the advice (what ``layerprobe compare`` prints), not a field dump."""
        from layerprobe.results.render import to_table

        return to_table(self).rstrip("\n")

    def _repr_html_(self) -> str:
        """Jupyter: the table as HTML, then the advice and its reasons."""
        import html

        from layerprobe.results.render import HEADER, _rows, advice_text

        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _rows(self))
        advice = html.escape(advice_text(self))
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<pre style='white-space:pre-wrap'>{advice}</pre>")

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN becomes null), stable key order: same inputs give the same bytes."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """One row per entry: index, name, kind, cka (and interval), drift, cosine, params, advice."""
        import pandas as pd

        rows = entry_rows(self.blocks, self.recommendation.freeze, self.recommendation.reasons)
        return pd.DataFrame([{k: r[k] for k in FRAME_COLUMNS} for r in rows])

    def groups_frame(self) -> pd.DataFrame:
        """One row per (entry, parameter group): the anatomy of the weight change."""
        import pandas as pd

        rows = [{"name": e["name"], "group": g, **s} for e in self.blocks for g, s in (e.get("groups") or {}).items()]
        return pd.DataFrame(rows)


