"""Render a :class:`~layerprobe.results.comparison.Comparison` as a table, Markdown, CSV or JSON."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from layerprobe.options import CSV_OPTIONS, FORMATS
from layerprobe.results.rows import entry_rows

if TYPE_CHECKING:
    from layerprobe.results.comparison import Comparison

__all__ = ["FORMATS", "HEADER", "advice_text", "cross_layer_csv", "printable_copy", "render", "table_rows", "to_csv",
           "to_markdown", "to_table"]


def _num(x: object, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, fmt)


def table_rows(c: Comparison) -> list[list[str]]:
    """The text table's cells, one list per entry (columns: :data:`HEADER`)."""
    rows = []
    for r in entry_rows(c.blocks, c.recommendation.freeze):
        cka = _num(r["cka"], ".4f")
        if r["cka_low"] is not None:
            cka += f" [{_num(r['cka_low'], '.4f')}, {_num(r['cka_high'], '.4f')}]"
        rows.append([
            r["name"], cka, _num(r["weight_drift"], ".4f"), _num(r["weight_cosine"], ".5f"),
            f"{r['n_params']:,}", r["most_moved"] or "—", "FREEZE" if r["frozen"] else "train",
        ])
    return rows


HEADER = ["entry", "CKA", "drift", "cosine", "params", "most-moved group", "advice"]
#: "most-moved group" shows the parameter group with the largest relative drift and, for weight
#: matrices, the rank holding 90% of its update's energy (``groups`` in the JSON has the rest).


def _escape(x: Any) -> Any:
    from layerprobe.errors import printable  # the one escaper of control characters (error lines too)

    if isinstance(x, str):
        return printable(x)
    if isinstance(x, dict):
        return {_escape(k): _escape(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_escape(v) for v in x]
    return x


def printable_copy(c: Comparison) -> Comparison:
    """``c`` with every string (entry and group names, reasons, notes, labels) escaped for a terminal:
    a hand-edited ``comparison.json`` whose names or reasons hold escape codes (``\\x1b[2J``) or newlines
    is shown as ``\\x1b[2J`` and ``\\n``, never acted on, and keeps the table's layout.

    >>> from layerprobe.freezing.rule import Recommendation
    >>> from layerprobe.results.comparison import Comparison
    >>> r = Recommendation([], ["b"], {"b": "train\\x1b[2J\\nnow"}, {}, 0.0, "cka")
    >>> printable_copy(Comparison([], r, {})).recommendation.reasons
    {'b': 'train\\\\x1b[2J\\\\nnow'}
    """
    from layerprobe.freezing.rule import Recommendation

    return type(c)(_escape(c.blocks), Recommendation(**_escape(c.recommendation.to_dict())), _escape(c.meta),
                   _escape(c.other), _escape(c.cross_layer))


def to_table(c: Comparison) -> str:
    """A plain-text table followed by the advice and its reasons (control characters in strings escaped)."""
    c = printable_copy(c)
    rows = [HEADER, *table_rows(c)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n\n" + advice_text(c)


def advice_text(c: Comparison) -> str:
    r = c.recommendation
    out = []
    for note in r.notes:
        out.append(f"note: {note}")
    if r.freeze:
        measured = next((n for n in r.notes if n.startswith("compute saving measured")), None)
        how = ("(estimate: the frozen blocks' share of the block parameters, prefix cached; --calibrate measures it)"
               if measured is None else "(measured, prefix not cached)" if "not cached" in measured
               else "(measured, prefix cached)")
        out.append(f"advice: freeze {', '.join(r.freeze)}; train {', '.join(r.train)}")
        out.append(f"  frozen parameters: {_pct(r.frozen_param_fraction)} of the model; "
                   f"training compute saved: {_pct(r.est_compute_saving, 0)} {how}")
    else:
        out.append("advice: freeze nothing — train every block")
    t = r.thresholds
    p = getattr(r, "predictor", None) or {}
    tol = getattr(r, "tolerance", None)
    basis = getattr(r, "basis", "cka")
    if tol is not None and p.get("name"):  # the prediction decided, not the CKA rule
        end = ", its interval's lower end" if p.get("decide") == "upper" else ""
        rule = (f"  rule: freeze the largest bottom prefix predicted ({p['name']}{end}) to keep >= "
                f"{_pct(1 - tol)} of full fine-tuning, with every smaller prefix")
    elif tol is not None:  # a tolerance, but nothing to predict from: nothing was frozen by any rule
        rule = "  rule: the prefix predicted within the tolerance — no measurement to predict from"
    elif basis == "drift":
        rule = f"  rule: freeze the longest bottom prefix with weight drift <= {t.get('max_drift')} (no CKA)"
    elif basis == "none":
        rule = "  rule: none applies (no CKA and no max_drift)"
    else:
        rule = f"  rule: freeze the longest bottom prefix with CKA >= {t['min_cka']}"
        if t.get("use_interval"):
            rule += " (lower bound of the interval when computed)"
        if t.get("max_drift") is not None:
            rule += f" and drift <= {t['max_drift']}"
    out.append(rule + f"; at least {t['min_train_blocks']} block(s) train")
    for name, why in r.reasons.items():
        out.append(f"  {name}: {why}")
    out += candidates_text(r)
    if c.other and c.other.get("n_params_compared"):
        out.append(f"  outside the blocks (pooler/head/final norm): drift {_num(c.other.get('weight_drift'), '.4f')} "
                   f"over {c.other['n_params_compared']:,} parameters")
    return "\n".join(out) + "\n"


def _pct(x: object, places: int = 1) -> str:
    """A share as a percentage; "—" when it is missing (a saved file may hold null).

    >>> _pct(0.6034), _pct(0.114, 0), _pct(None)
    ('60.3%', '11%', '—')
    """
    return f"{100 * x:.{places}f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def candidates_text(r: Any) -> list[str]:
    """The per-prefix trade-off: predicted accuracy (interval), compute and memory saved, and whose prediction."""
    rows = [c for c in (getattr(r, "candidates", None) or []) if isinstance(c, dict)]
    if not rows or all(c.get("basis") == "none" for c in rows):
        return []
    p = getattr(r, "predictor", None) or {}
    how = (f"{p.get('name')}, fit on {', '.join(p.get('fit_on') or [])}"
           + ("" if p.get("validated") else "; preliminary: not yet validated on held-out tasks")
           + ("; the advice holds the interval's lower end to the tolerance" if p.get("decide") == "upper" else ""))
    head = ["freeze up to", "predicted acc vs full", "interval", "compute saved/epoch", "memory saved"]
    table = [head] + [[(c.get("freeze") or ["—"])[-1], _pct(c.get("predicted_rel_acc")),
                       f"[{_pct((c.get('interval') or [None, None])[0])}, {_pct((c.get('interval') or [None, None])[1])}]",
                       _pct(c.get("compute_saved")), _num(c.get("memory_saved_mb"), ",.0f") + " MB"
                       + ("" if c.get("within_tolerance") or r.tolerance is None else "  (over tolerance)")]
                      for c in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    basis, max_drift = getattr(r, "basis", "cka"), (getattr(r, "thresholds", None) or {}).get("max_drift")
    from layerprobe.freezing.rule import decided_by

    tol = f"tolerance {_pct(r.tolerance)}" if r.tolerance is not None else decided_by(basis, max_drift)
    return [f"  predicted cost of freezing each bottom prefix ({how}; {tol}):"] + [
        "    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def to_markdown(c: Comparison) -> str:
    """The table in Markdown, then the advice as a quote (control characters in strings escaped)."""
    c = printable_copy(c)
    rows = [HEADER, *table_rows(c)]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    return "\n".join(lines) + "\n\n" + "\n".join(f"> {line}" if line else ">" for line in advice_text(c).splitlines()) + "\n"


def to_csv(c: Comparison) -> str:
    df = c.to_frame().reset_index()  # the entry name back as a column, after "index" as before
    return df[["index", "name", *(k for k in df.columns if k not in ("index", "name"))]].to_csv(**CSV_OPTIONS)


def render(c: Comparison, fmt: str) -> str:
    if fmt == "table":
        return to_table(c)
    if fmt == "json":
        return c.to_json()
    if fmt == "csv":
        return to_csv(c)
    if fmt == "markdown":
        return to_markdown(c)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def cross_layer_csv(result: dict) -> str:
    """The cross-layer maps of a comparison dict in long form: ``map,row,column,cka``.

    ``map`` is ``base_vs_tuned`` (row: entry of A, column: entry of B), ``base`` or ``tuned``;
    an undefined value is an empty cell.

    >>> d = {"cross_layer": {"names": ["e", "b0"], "base_vs_tuned": [[1.0, 0.5], [0.4, None]],
    ...      "base": [[1.0, 0.3], [0.3, 1.0]], "tuned": [[1.0, 0.2], [0.2, 1.0]]}}
    >>> cross_layer_csv(d).splitlines()[:3]
    ['map,row,column,cka', 'base_vs_tuned,e,e,1', 'base_vs_tuned,e,b0,0.5']
    """
    x = result["cross_layer"]
    names = x["names"]
    lines = ["map,row,column,cka"]
    for key in ("base_vs_tuned", "base", "tuned"):
        for i, row in enumerate(x[key]):
            for j, v in enumerate(row):
                lines.append(f"{key},{names[i]},{names[j]},{'' if v is None else format(v, '.10g')}")
    return "\n".join(lines) + "\n"
