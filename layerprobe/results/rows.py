"""Entries as rows: the one place that turns a comparison's entries into table rows, for the
DataFrame, the figures and the text report alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["entry_rows", "most_moved_group"]


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
