"""The one schema a snapshot file must satisfy, checked in full when it is loaded.

:func:`check_snapshot` runs before any field of a loaded snapshot is used, so a tampered or odd
file is refused with one line naming the file and the field, never a ``KeyError`` deep in compare.

>>> import torch
>>> check_snapshot({"format": "layerprobe-snapshot", "format_version": 1, "representations": {},
...                 "weights": {}, "meta": {"entries": "x"}}, "s.pt")
Traceback (most recent call last):
...
layerprobe.errors.LayerProbeError: s.pt: snapshot meta.entries must be a list of entries, found str
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from layerprobe.errors import LayerProbeError, one_line

__all__ = ["check_snapshot", "representation_problem"]

_KINDS = ("embeddings", "block", "other", "head", "final_norm")
_POSITIVE_META = ("n_examples", "n_distinct_examples", "max_length", "max_tokens", "batch_size")
_STRING_META = ("fingerprint", "pooling", "model_class", "dtype")
#: largest count a snapshot may claim for n_examples / max_length (a 5000-digit int is refused)
_MAX_COUNT = 1 << 40


def _fail(msg: str, path: Any) -> LayerProbeError:
    return LayerProbeError(f"snapshot {msg}", path)


def check_snapshot(obj: Any, path: str | os.PathLike | None = None) -> None:
    """Refuse anything that is not a well-formed layerprobe snapshot (layout, types, ranges).

    Checked: ``format_version`` a non-negative int; ``meta.entries`` a non-empty list of dicts with
    a unique string ``name`` and a string ``kind`` (``index`` an int or None, ``modules`` a list of
    strings when present); counts in meta positive ints; ``representations`` float 2-D tensors of
    known entries, each entry of the probe present, at least one column, one row count shared with
    ``meta.n_examples``; ``token_examples`` a tensor when present; ``weights`` dicts of tensors.
    """
    if not isinstance(obj, dict):
        raise _fail(f"must be a dict, found {type(obj).__name__}", path)
    version = obj.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise _fail(f"format_version must be a non-negative integer, found {one_line(repr(version), 40)}", path)
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        raise _fail(f"meta must be a dict, found {type(meta).__name__}", path)
    entries = meta.get("entries")
    if not isinstance(entries, list):
        raise _fail(f"meta.entries must be a list of entries, found {type(entries).__name__}", path)
    if not entries:
        raise _fail("meta.entries is empty", path)
    reps = obj.get("representations")
    if isinstance(reps, dict):  # shape first: the most telling problem of a hand-made file
        known = {e.get("name") for e in entries if isinstance(e, dict)}
        for name, rep in reps.items():
            if name not in known or not torch.is_tensor(rep) or rep.dim() != 2:
                raise _fail(f"representation {name!r} is not a 2-D tensor of a known entry", path)
    names: list[str] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise _fail(f"meta.entries[{i}] must be a dict with 'name' and 'kind', found {type(e).__name__}", path)
        name, kind = e.get("name"), e.get("kind")
        if not isinstance(name, str) or not name:
            raise _fail(f"meta.entries[{i}] has no string 'name'", path)
        if not isinstance(kind, str):
            raise _fail(f"meta.entries[{i}] ({name}) has no string 'kind'", path)
        idx = e.get("index")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
            raise _fail(f"meta.entries[{i}] ({name}) index must be an integer, found {one_line(repr(idx), 40)}", path)
        mods = e.get("modules")
        if mods is not None and (not isinstance(mods, list) or not all(isinstance(m, str) for m in mods)):
            raise _fail(f"meta.entries[{i}] ({name}) modules must be a list of strings", path)
        names.append(name)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _fail(f"meta.entries names {dup!r} twice", path)
    for key in _POSITIVE_META:
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_COUNT):
            raise _fail(f"meta.{key} must be a positive integer, found {one_line(repr(v), 40)}", path)
    for key in _STRING_META:
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            raise _fail(f"meta.{key} must be a string, found {type(v).__name__}", path)
    reps, weights = obj.get("representations"), obj.get("weights")
    if not isinstance(reps, dict) or not isinstance(weights, dict):
        raise _fail("lacks 'representations' or 'weights' dicts", path)
    rows = set()
    for name, rep in reps.items():
        if name not in names or not torch.is_tensor(rep) or rep.dim() != 2:
            raise _fail(f"representation {name!r} is not a 2-D tensor of a known entry", path)
        if not rep.is_floating_point():
            raise _fail(f"representation {name!r} has dtype {rep.dtype}, expected floating point", path)
        if rep.shape[1] == 0 or rep.shape[0] == 0:
            raise _fail(f"representation {name!r} has shape {tuple(rep.shape)} (no rows or no columns)", path)
        rows.add(rep.shape[0])
    if reps:
        absent = [n for n in names if n not in reps]
        if absent:
            raise _fail(f"has no representation for {absent[0]!r} (of {len(absent)} entries without one)", path)
        n = meta.get("n_examples")
        if len(rows) == 1 and n is not None and "tokens" != meta.get("pooling") and rows != {n}:
            raise _fail(f"meta.n_examples is {n} but the representations have {rows.pop()} rows", path)
    te = obj.get("token_examples")
    if te is not None and not torch.is_tensor(te):
        raise _fail(f"token_examples must be a tensor, found {type(te).__name__}", path)
    for name, group in weights.items():
        if not isinstance(group, dict) or not all(isinstance(k, str) and torch.is_tensor(t) for k, t in group.items()):
            raise _fail(f"weights of {name!r} are not a dict of tensors", path)
        for k, t in group.items():
            if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool, torch.uint8, torch.int8)):
                raise _fail(f"weight {name}/{k} has dtype {t.dtype}", path)
    nd, n = meta.get("n_distinct_examples"), meta.get("n_examples")
    if nd is not None and isinstance(n, int) and nd > n:
        raise _fail(f"meta.n_distinct_examples is {nd}, more than meta.n_examples {n}", path)
    if isinstance(meta.get("n_examples"), int) and not math.isfinite(float(meta["n_examples"])):
        raise _fail("meta.n_examples is not finite", path)


def representation_problem(r: torch.Tensor, constant: bool = True) -> str | None:
    """Why a representation makes CKA undefined (non-finite, or constant when ``constant``), or None.

    The one check of the product, used by ``snapshot`` (which refuses non-finite representations:
    activations that overflow) and by ``compare`` (which refuses both, per entry), with the metric
    core's definition of "constant" (every column constant up to float64 rounding, so the centred
    representation is zero): an entry it passes is never found undefined by the CKA functions for
    this reason.

    >>> representation_problem(torch.tensor([[1.0, float("inf")], [2.0, 3.0]]))
    'non-finite values (NaN/Inf) in the representations'
    >>> representation_problem(torch.ones(3, 2)), representation_problem(torch.ones(3, 2), constant=False)
    ('constant (zero-variance) representation', None)
    """
    from layerprobe.metrics.core import column_range, constant_columns

    if not bool(torch.isfinite(r).all()):
        return "non-finite values (NaN/Inf) in the representations"
    if constant and bool(constant_columns(*column_range(r)).all()):
        return "constant (zero-variance) representation"
    return None
