"""The result of a comparison and its JSON contract.

:class:`Comparison` holds the per-entry rows, the advice and the metadata; ``to_dict`` /
``to_json`` are the JSON contract (described by ``layerprobe/schemas/comparison.schema.json``).
Rows for tables and figures come from :func:`~layerprobe.results.rows.entry_rows`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerprobe.freezing.rule import Recommendation
from layerprobe.results.rows import entry_rows
from layerprobe.results.schema import SCHEMA_VERSION, check_comparison

if TYPE_CHECKING:  # pandas is imported when a frame is asked for
    import pandas as pd

__all__ = ["FLOAT_COLUMNS", "FRAME_COLUMNS", "Comparison"]

#: the columns of :meth:`Comparison.to_frame` (and of ``comparison.csv``), in order
FRAME_COLUMNS = ("index", "name", "kind", "cka", "cka_low", "cka_high", "weight_drift", "weight_cosine",
                 "max_abs_change", "n_params", "advice", "reason")
#: the float64 columns of :meth:`Comparison.to_frame` (written with a decimal point: ``1.0``, never ``1``)
FLOAT_COLUMNS = ("cka", "cka_low", "cka_high", "weight_drift", "weight_cosine", "max_abs_change")


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

    @classmethod
    def from_dict(cls, d: Any, path: str | os.PathLike | None = None) -> Comparison:
        """A comparison back from :meth:`to_dict` or a saved ``comparison.json`` (to re-render, re-plot
        or re-advise it without the models; NaN values come back as None).

        The document is held to the JSON contract and to what its values can mean first
        (:func:`~layerprobe.results.schema.check_comparison`: the schema, then ranges and an advice that agrees
        with itself): anything else is a one-line :class:`~layerprobe.errors.LayerProbeError` naming ``path``
        and the field.
        """
        d = check_comparison(d, path)
        return cls(list(d["blocks"]), Recommendation(**d["recommendation"]), dict(d["meta"]), d.get("other"),
                   d.get("cross_layer"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Comparison:
        """:meth:`from_dict` of a ``comparison.json`` file, read through the file guards of
        :mod:`layerprobe.io.files` (a regular file, bounded, strict JSON)."""
        from layerprobe.io.files import load_json

        return cls.from_dict(load_json(path, "comparison JSON"), path)

    def model_mismatch(self, model: Any) -> str | None:
        """Why this comparison was not made on ``model``'s architecture, or None: the first entry that
        ``model`` lacks or whose parameter count differs (each tied weight counted once, as ``n_params``).
        The model may have entries the comparison lacks (``compare --blocks``/``--embeddings`` subsets).
        An entry recorded with 0 parameters (no weights were measured) is not compared.

        >>> from transformers import BertConfig, BertModel
        >>> small = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                              intermediate_size=20, vocab_size=50))
        >>> c = Comparison([{"name": "block.0", "kind": "block", "n_params": 1}], None, {})  # type: ignore[arg-type]
        >>> c.model_mismatch(small)
        'block.0 has 1 parameters in the comparison, 1,828 in the model'
        """
        from layerprobe.model.blocks import find_blocks

        blocks = find_blocks(model)
        counts = dict.fromkeys(blocks.names, 0)
        for name, p in model.named_parameters():
            ref = blocks.entry_of(name)
            if ref is not None:
                counts[ref.name] += int(p.numel())
        for e in self.blocks:
            if e["name"] not in counts:
                return f"{e['name']} is not an entry of the model, which has {blocks.names}"
            if e["n_params"] and e["n_params"] != counts[e["name"]]:
                return (f"{e['name']} has {e['n_params']:,} parameters in the comparison, "
                        f"{counts[e['name']]:,} in the model")
        return None

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
        """Jupyter: the table as HTML (advised-frozen rows highlighted), then the advice and its reasons."""
        import html

        from layerprobe.results.render import HEADER, advice_text, table_rows

        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
        frozen = set(self.recommendation.freeze)
        body = "".join(
            ("<tr style='background-color:#dbe9f6'>" if r[0] in frozen else "<tr>")
            + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(self))
        advice = html.escape(advice_text(self))
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<pre style='white-space:pre-wrap'>{advice}</pre>")

    def plot(self, ax: Any = None, title: str | None = None, path: str | os.PathLike | None = None) -> Any:
        """The per-entry figure (:func:`~layerprobe.results.plots.plot_blocks`): returned, so a notebook
        shows it inline; ``ax`` to draw into your axes, ``path`` to also write a PNG."""
        from layerprobe.results.plots import plot_blocks

        return plot_blocks(self.to_dict(), path, title, ax=ax)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN becomes null), stable key order: same inputs give the same bytes."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """One row per entry, indexed by entry name: index, kind, cka (and interval), drift, cosine,
        params, advice. Numeric columns are float64 (a missing value is NaN), ``n_params`` int64."""
        import pandas as pd

        rows = entry_rows(self.blocks, self.recommendation.freeze, self.recommendation.reasons)
        df = pd.DataFrame([{k: r[k] for k in FRAME_COLUMNS} for r in rows], columns=list(FRAME_COLUMNS))
        for c in FLOAT_COLUMNS:
            if c in df.columns:
                df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        return df.set_index("name")

    def groups_frame(self) -> pd.DataFrame:
        """One row per (entry, parameter group): the anatomy of the weight change."""
        import pandas as pd

        rows = [{"name": e["name"], "group": g, **s} for e in self.blocks for g, s in (e.get("groups") or {}).items()]
        return pd.DataFrame(rows)


