"""Shape of an update ΔW = W1 − W0: its effective rank (float64 singular values)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics._weights import _as_tensor, _pairs
from layerprobe.metrics.core import Weight

__all__ = ["matrix_updates", "param_update_rank", "update_rank"]


def _rank_key(energy: float) -> str:
    return f"rank{energy * 100:g}"


def update_rank(delta: Weight, energy: float = 0.9, stacked: bool = False) -> dict | None:
    """Effective rank of an update ΔW = W1 − W0 (float64 singular values).

    ``stable_rank`` = ‖ΔW‖²_F / ‖ΔW‖²₂ (between 1 and rank; 0.0 for ΔW = 0). ``rank90`` is the
    smallest k whose top-k singular values hold at least ``energy`` of Σσ²; the key is
    ``f"rank{energy*100:g}"`` (``rank90`` for the default 0.9, ``rank99`` for 0.99); 0 for
    ΔW = 0. Tensors with more than 2 dims (conv kernels) are reshaped to (out, −1), unless ``stacked``:
    then the first dim stacks separate matrices (a mixture of experts' fused ``(experts, out, in)``
    weights) and each is measured alone: the largest of their stable ranks and ``rank90`` (what a
    LoRA adapter on every expert would need), not the number of experts.

    Args:
        delta: the update, shape (out, in) or (out, ...); 1-D or 0-D → not applicable.
        energy: energy fraction in (0, 1].
        stacked: a 3-D ``delta`` is a stack of matrices along its first dim.

    Returns:
        ``{"stable_rank": float, "rank90": int}``, or None for a 1-D/0-D tensor. Non-finite
        updates give ``{"stable_rank": nan, "rank90": None}`` with a RuntimeWarning.

    >>> import torch
    >>> d = torch.outer(torch.tensor([1.0, 0, 0]), torch.tensor([3.0, 0])) + \\
    ...     torch.outer(torch.tensor([0, 1.0, 0]), torch.tensor([0, 1.0]))
    >>> update_rank(d)
    {'stable_rank': 1.1111111111111112, 'rank90': 1}
    >>> update_rank(torch.zeros(4)) is None
    True
    >>> update_rank(torch.zeros(0, 4))  # no elements: no update
    {'stable_rank': 0.0, 'rank90': 0}
    """
    if not 0.0 < energy <= 1.0:
        raise LayerProbeError(f"energy must be in (0, 1], got {energy=}")
    t = _as_tensor(delta, "delta")
    key = _rank_key(energy)
    if t.ndim < 2:
        return None
    if t.numel() == 0:  # (0, n), (n, 0), (0, 3, 2): an empty update has no direction (reshape(0, -1) is ambiguous)
        return {"stable_rank": 0.0, key: 0}
    if stacked and t.ndim == 3:
        each = [update_rank(t[i], energy) for i in range(t.shape[0])]
        if any(r is None or r[key] is None for r in each):  # non-finite (warned once per matrix)
            return {"stable_rank": float("nan"), key: None}
        return {"stable_rank": max(r["stable_rank"] for r in each if r),
                key: max(int(r[key]) for r in each if r)}
    m = t.to(device="cpu", dtype=torch.float64).reshape(t.shape[0], -1)
    if m.numel() == 0:
        return {"stable_rank": 0.0, key: 0}
    if not bool(torch.isfinite(m).all()):
        warnings.warn("update_rank: update contains NaN or Inf", RuntimeWarning, stacklevel=2)
        return {"stable_rank": float("nan"), key: None}
    s2 = torch.linalg.svdvals(m) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return {"stable_rank": 0.0, key: 0}
    cum = torch.cumsum(s2, dim=0) / total
    # Tolerance so that an exact split (e.g. 90% in the top singular value) is not missed.
    k = int(torch.searchsorted(cum, torch.tensor(energy * (1.0 - 1e-12), dtype=torch.float64))) + 1
    return {"stable_rank": total / float(s2[0]), key: min(k, int(s2.numel()))}


def param_update_rank(name: str, delta: Weight, energy: float = 0.9) -> dict | None:
    """:func:`update_rank` of the update of parameter ``name``: a 3-D one named ``*expert*`` (a mixture of
    experts' fused weights) is ranked per expert, any other as :func:`update_rank` does.

    >>> import torch
    >>> param_update_rank("mlp.experts.down_proj", torch.stack([torch.eye(3)] * 2))["rank90"]
    3
    """
    t = _as_tensor(delta, name)
    return update_rank(t, energy, stacked=t.ndim == 3 and "expert" in name.lower())


def _f64_delta(a: Weight, b: Weight, name: str) -> torch.Tensor:
    ta, tb = _as_tensor(a, name), _as_tensor(b, name)
    if tuple(ta.shape) != tuple(tb.shape):
        raise LayerProbeError(
            f"parameter {name!r}: shape mismatch, before {tuple(ta.shape)} vs after {tuple(tb.shape)}"
        )
    return tb.to(device="cpu", dtype=torch.float64) - ta.to(device="cpu", dtype=torch.float64)


def matrix_updates(w0: Mapping[str, Weight], w1: Mapping[str, Weight], energy: float = 0.9) -> dict[str, dict]:
    """Rank of the update of every parameter with ≥ 2 dims (a 3-D one named ``*expert*``: per expert,
    see :func:`update_rank`).

    Args:
        w0: name → tensor before.
        w1: name → tensor after (same names and shapes).
        energy: energy fraction for the ``rank90`` key (see :func:`update_rank`).

    Returns:
        ``{name: {"shape": tuple, "stable_rank": float, "rank90": int}}`` in the order of ``w0``.

    >>> import torch
    >>> w0 = {"q.weight": torch.zeros(3, 3), "q.bias": torch.zeros(3)}
    >>> w1 = {"q.weight": torch.eye(3), "q.bias": torch.ones(3)}
    >>> matrix_updates(w0, w1)
    {'q.weight': {'shape': (3, 3), 'stable_rank': 3.0, 'rank90': 3}}
    """
    out = {}
    for name, a, b in _pairs(w0, w1):
        if _as_tensor(a, name).ndim < 2:
            if tuple(_as_tensor(a, name).shape) != tuple(_as_tensor(b, name).shape):
                _f64_delta(a, b, name)  # raises the shape error
            continue
        r = param_update_rank(name, _f64_delta(a, b, name), energy)
        assert r is not None  # ≥ 2 dims
        out[name] = {"shape": tuple(_as_tensor(a, name).shape), **r}
    return out
