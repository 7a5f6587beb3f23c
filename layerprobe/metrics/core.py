"""Shared pieces of the CKA estimators: input conversion, validation, stable centring.

The estimators live in :mod:`~layerprobe.metrics.linear`, :mod:`~layerprobe.metrics.rbf`,
:mod:`~layerprobe.metrics.streaming`, :mod:`~layerprobe.metrics.maps` and
:mod:`~layerprobe.metrics.bootstrap`. Outside the metrics only :data:`__all__` is used: the
definition of a constant representation (:func:`column_range`, :func:`constant_columns`) and the
centring (:func:`prepare`, for the benchmarks).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from layerprobe.errors import LayerProbeError

__all__ = ["HIGHER_IS_MORE_SIMILAR", "CKASubsampleWarning", "CKAUndefinedWarning", "Matrix", "Weight", "Weights",
           "column_range", "constant_columns", "prepare"]

#: what the CKA functions take: ``(n, d)`` representations (rows: probe examples), a torch tensor or a
#: numpy array of any float dtype on any device
Matrix = torch.Tensor | np.ndarray
#: one weight tensor of the drift functions (a tensor or an array)
Weight = torch.Tensor | np.ndarray
#: what the drift functions take: one weight, or a mapping (paired by name) or sequence (by position) of them
Weights = Weight | Mapping[str, Weight] | Sequence[Weight]

#: CKA is a similarity: higher means more alike (1 = unchanged).
HIGHER_IS_MORE_SIMILAR = True

EPS = float(np.finfo(np.float64).eps)


class CKAUndefinedWarning(RuntimeWarning):
    """CKA is undefined for the input (constant representation, NaN/Inf); the result is nan."""


class CKASubsampleWarning(UserWarning):
    """An O(n²) estimator was computed on a deterministic subsample of the rows."""


def as_f64(x, name: str) -> torch.Tensor:
    """Return ``x`` as a float64 CPU torch tensor (never modified in place by callers)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LayerProbeError(
            f"{name} must be a numeric array or tensor, got {type(x).__name__}"
        ) from exc
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def as_f64_owned(x, name: str) -> tuple[torch.Tensor, bool]:
    """:func:`as_f64` plus whether the result is a private copy (safe to modify in place)."""
    t = as_f64(x, name)
    if isinstance(x, torch.Tensor):
        return t, t.data_ptr() != x.data_ptr()
    if isinstance(x, np.ndarray):
        return t, not np.may_share_memory(t.numpy(), x)
    return t, True


def as_cpu(x, name: str) -> torch.Tensor:
    """``x`` as a CPU tensor in its own float dtype (float64 for non-float input); no copy when
    it already is one. Used by the chunked paths, which convert to float64 a chunk at a time."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
        return t if t.is_floating_point() else t.to(torch.float64)
    return as_f64(x, name)


def check_2d(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2:
        raise LayerProbeError(
            f"{name} must be 2-D (n examples × d features), got {name}.shape={tuple(x.shape)}"
        )


def check_pair(x: torch.Tensor, y: torch.Tensor, min_n: int, what: str = "CKA") -> None:
    check_2d(x, "x")
    check_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise LayerProbeError(
            "x and y must have the same number of rows (the same probe examples), got "
            f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if x.shape[0] < min_n:
        raise LayerProbeError(f"{what} needs at least {min_n} rows, got x.shape={tuple(x.shape)}")


def undefined(reason: str, stacklevel: int = 3) -> float:
    warnings.warn(f"CKA is undefined: {reason}; returning nan", CKAUndefinedWarning, stacklevel)
    return float("nan")


def constant_columns(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Columns whose range is zero up to float64 rounding of their magnitude."""
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    scale = torch.maximum(lo.abs(), hi.abs())
    # an Inf column is not "constant": it must stay non-finite so that the caller reports it
    return ((hi - lo) <= 8.0 * EPS * scale) & torch.isfinite(scale)


def column_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column minima and maxima. Two reductions: ``torch.aminmax(dim=0)`` costs ~5x as much."""
    return x.amin(dim=0), x.amax(dim=0)


def centre(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Column-centre ``x`` stably: subtract the mean, then the mean of the residual.

    Columns that are constant up to rounding become exactly zero, so a constant representation
    is detected as such instead of producing a number from rounding noise. With ``inplace``
    ``x`` itself is overwritten (no n×d allocation: large inputs spend much of their time in
    page faults of fresh buffers).
    """
    const = None
    if x.shape[0] > 0 and x.shape[1] > 0:
        const = constant_columns(*column_range(x))
    mean = x.mean(dim=0, keepdim=True)
    xc = x.sub_(mean) if inplace else x - mean
    xc -= xc.mean(dim=0, keepdim=True)
    if const is not None and bool(const.any()):
        xc[:, const] = 0.0
    return xc


def prepare(x: torch.Tensor, name: str, inplace: bool = False) -> tuple[torch.Tensor | None, str | None]:
    """Centre and scale to unit Frobenius norm (CKA is scale invariant), or say why undefined.

    With ``inplace`` the caller's private copy ``x`` is reused as the output buffer.
    """
    # NaN/Inf anywhere propagates into the column means and so into the norm (Inf − Inf = NaN).
    xc = centre(x, inplace)
    norm = torch.linalg.vector_norm(xc)
    if not math.isfinite(float(norm)):
        return None, f"{name} contains NaN or Inf"
    if not float(norm) > 0.0:
        return None, f"{name} is constant (zero variance after centring), {name}.shape={tuple(x.shape)}"
    return xc.div_(norm), None


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius inner product ⟨a, b⟩."""
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def fro(a: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def clip01(v: float) -> float:
    return min(1.0, max(0.0, v))
