"""Centred kernel alignment (CKA): how similar two sets of representations of the same inputs are.

CKA is a **similarity**: 1 means "the same up to rotation and isotropic scaling", 0 means
unrelated. Every function takes numpy arrays or torch tensors of any float dtype on any device and
computes in float64 torch on the CPU; results are Python floats or float64 numpy arrays.

Rows are probe examples (the same n inputs, in the same order, for ``x`` and ``y``); columns are
features. Forms used (Kornblith et al. 2019; Song et al. 2012; Nguyen, Raghu, Kornblith 2021):

* linear CKA ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` with column-centred X, Y (feature form, O(n·d²)),
  or ``⟨K, L⟩ / (‖K‖‖L‖)`` with centred Gram matrices K = XXᵀ, L = YYᵀ (Gram form, O(n²·d));
  each call picks the cheaper one, both give the same value.
* debiased CKA: the same ratio with the unbiased estimator HSIC₁.
* RBF CKA: Gaussian kernels, σ² = threshold² · median squared distance.
* minibatch CKA: ratio of HSIC₁ sums over batches (a different estimator from full-data CKA).
* :class:`StreamingCKA`: exact full-data linear CKA from batches in O(d²) memory.

Undefined cases (a representation that is constant after centring, NaN or Inf in the input) give
``nan`` together with a :class:`CKAUndefinedWarning`, never a silent number. Bad shapes raise
:class:`~layerprobe.errors.LayerProbeError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from layerprobe.errors import LayerProbeError

__all__ = [
    "CKASubsampleWarning",
    "CKAUndefinedWarning",
    "CrossMoments",
    "MinibatchCKA",
    "StreamingCKA",
    "bootstrap_cka",
    "bootstrap_cka_many",
    "cka_from_moments",
    "cka_maps",
    "cka_matrix",
    "cross_moments",
    "debiased_cka",
    "linear_cka",
    "merge_moments",
    "minibatch_cka",
    "rbf_cka",
]

#: CKA is a similarity: higher means more alike (1 = unchanged).
HIGHER_IS_MORE_SIMILAR = True

_EPS = float(np.finfo(np.float64).eps)


class CKAUndefinedWarning(RuntimeWarning):
    """CKA is undefined for the input (constant representation, NaN/Inf); the result is nan."""


class CKASubsampleWarning(UserWarning):
    """An O(n²) estimator was computed on a deterministic subsample of the rows."""


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def _as_f64(x, name: str) -> torch.Tensor:
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


def _as_f64_owned(x, name: str) -> tuple[torch.Tensor, bool]:
    """:func:`_as_f64` plus whether the result is a private copy (safe to modify in place)."""
    t = _as_f64(x, name)
    if isinstance(x, torch.Tensor):
        return t, t.data_ptr() != x.data_ptr()
    if isinstance(x, np.ndarray):
        return t, not np.may_share_memory(t.numpy(), x)
    return t, True


def _check_2d(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2:
        raise LayerProbeError(
            f"{name} must be 2-D (n examples × d features), got {name}.shape={tuple(x.shape)}"
        )


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_n: int, what: str = "CKA") -> None:
    _check_2d(x, "x")
    _check_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise LayerProbeError(
            "x and y must have the same number of rows (the same probe examples), got "
            f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if x.shape[0] < min_n:
        raise LayerProbeError(f"{what} needs at least {min_n} rows, got x.shape={tuple(x.shape)}")


def _undefined(reason: str, stacklevel: int = 3) -> float:
    warnings.warn(f"CKA is undefined: {reason}; returning nan", CKAUndefinedWarning, stacklevel)
    return float("nan")


def _constant_columns(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Columns whose range is zero up to float64 rounding of their magnitude."""
    scale = torch.maximum(lo.abs(), hi.abs())
    return (hi - lo) <= 8.0 * _EPS * scale


def _centre(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Column-centre ``x`` stably: subtract the mean, then the mean of the residual.

    Columns that are constant up to rounding become exactly zero, so a constant representation
    is detected as such instead of producing a number from rounding noise. With ``inplace``
    ``x`` itself is overwritten (no n×d allocation: large inputs spend much of their time in
    page faults of fresh buffers).
    """
    const = None
    if x.shape[0] > 0 and x.shape[1] > 0:
        lo, hi = torch.aminmax(x, dim=0)
        const = _constant_columns(lo, hi)
    mean = x.mean(dim=0, keepdim=True)
    xc = x.sub_(mean) if inplace else x - mean
    xc -= xc.mean(dim=0, keepdim=True)
    if const is not None and bool(const.any()):
        xc[:, const] = 0.0
    return xc


def _prepare(x: torch.Tensor, name: str, inplace: bool = False) -> tuple[torch.Tensor | None, str | None]:
    """Centre and scale to unit Frobenius norm (CKA is scale invariant), or say why undefined.

    With ``inplace`` the caller's private copy ``x`` is reused as the output buffer.
    """
    # NaN/Inf anywhere propagates into the column means and so into the norm (Inf − Inf = NaN):
    # checking the norm replaces a separate full pass over x.
    xc = _centre(x, inplace)
    norm = torch.linalg.vector_norm(xc)
    if not math.isfinite(float(norm)) or not bool(torch.isfinite(x.sum(dim=0)).all()):
        return None, f"{name} contains NaN or Inf"
    if not float(norm) > 0.0:
        return None, f"{name} is constant (zero variance after centring), {name}.shape={tuple(x.shape)}"
    return xc.div_(norm), None


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius inner product ⟨a, b⟩."""
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def _fro(a: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def _clip01(v: float) -> float:
    return min(1.0, max(0.0, v))


def _use_gram(n: int, d1: int, d2: int) -> bool:
    """Gram form costs ~n²(d1+d2), feature form ~n(d1+d2)²: use Gram when n < d1 + d2."""
    return n < d1 + d2


def _hsic1(cross_sq: float, rx: torch.Tensor, ry: torch.Tensor, n: int) -> float:
    """Unbiased HSIC₁ (Song et al. 2012) of linear kernels from centred-data quantities.

    Args:
        cross_sq: ‖YᵀX‖²_F = ⟨K, L⟩ of the column-centred data.
        rx: squared row norms of centred X, shape (n,) (the diagonal of K).
        ry: squared row norms of centred Y, shape (n,).
        n: number of rows (≥ 4).
    """
    rxry = float(torch.dot(rx, ry))
    total = float(rx.sum()) * float(ry.sum())
    return (cross_sq - n / (n - 2) * rxry + total / ((n - 1) * (n - 2))) / (n * (n - 3))


def _hsic1_terms(xc: torch.Tensor, yc: torch.Tensor) -> tuple[float, float, float]:
    """HSIC₁(K,L), HSIC₁(K,K), HSIC₁(L,L) of column-centred ``xc`` (n×d1), ``yc`` (n×d2)."""
    n, d1 = xc.shape
    d2 = yc.shape[1]
    rx = (xc * xc).sum(dim=1)
    ry = (yc * yc).sum(dim=1)
    if _use_gram(n, d1, d2):
        k = xc @ xc.T
        l_ = yc @ yc.T
        sxy, sxx, syy = _dot(k, l_), _dot(k, k), _dot(l_, l_)
    else:
        sxy = _fro(yc.T @ xc) ** 2
        sxx = _fro(xc.T @ xc) ** 2
        syy = _fro(yc.T @ yc) ** 2
    return _hsic1(sxy, rx, ry, n), _hsic1(sxx, rx, rx, n), _hsic1(syy, ry, ry, n)


def _ratio(hxy: float, hxx: float, hyy: float, what: str) -> float:
    if not (math.isfinite(hxy) and math.isfinite(hxx) and math.isfinite(hyy)):
        return _undefined(f"{what} is not finite (NaN or Inf in the input)", stacklevel=4)
    if hxx <= 0.0 or hyy <= 0.0:
        return _undefined(
            f"{what} self-similarity is not positive ({hxx=:.3g}, {hyy=:.3g})", stacklevel=4
        )
    return hxy / math.sqrt(hxx * hyy)


# --------------------------------------------------------------------------------------------
# Offline estimators
# --------------------------------------------------------------------------------------------


def linear_cka(x, y) -> float:
    """Linear CKA between two representations of the same n examples.

    Computes ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` after column-centring (or the identical Gram form
    ``⟨K, L⟩/(‖K‖‖L‖)`` when n < d1 + d2, which is cheaper then). Similarity in [0, 1].

    Args:
        x: representation, shape (n, d1).
        y: representation, shape (n, d2); row i of ``y`` is the same example as row i of ``x``.

    Returns:
        Linear CKA, or ``nan`` with a :class:`CKAUndefinedWarning` if either input is constant
        after centring or contains NaN/Inf.

    Raises:
        LayerProbeError: if an input is not 2-D, the row counts differ, or n < 2.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((50, 8))
    >>> round(linear_cka(x, 3.0 * x + 1.0), 12)
    1.0
    >>> 0.0 < linear_cka(x, np.tanh(x @ rng.standard_normal((8, 4)))) < 1.0
    True
    """
    (x, own_x), (y, own_y) = _as_f64_owned(x, "x"), _as_f64_owned(y, "y")
    _check_pair(x, y, 2, "linear_cka")
    xc, why_x = _prepare(x, "x", inplace=own_x)
    yc, why_y = _prepare(y, "y", inplace=own_y)
    if why_x or why_y:
        return _undefined("; ".join(w for w in (why_x, why_y) if w))
    n, d1 = xc.shape
    d2 = yc.shape[1]
    if _use_gram(n, d1, d2):
        k = xc @ xc.T
        l_ = yc @ yc.T
        value = _dot(k, l_) / (_fro(k) * _fro(l_))
    else:
        value = _fro(yc.T @ xc) ** 2 / (_fro(xc.T @ xc) * _fro(yc.T @ yc))
    return _clip01(value)


def debiased_cka(x, y) -> float:
    """Debiased linear CKA: the CKA ratio with the unbiased HSIC₁ estimator (Song et al. 2012).

    Unlike :func:`linear_cka` it is close to 0 for independent data even at small n; it can be
    slightly negative and is not clipped.

    Args:
        x: representation, shape (n, d1), n ≥ 4.
        y: representation, shape (n, d2).

    Returns:
        Debiased CKA, or ``nan`` with a :class:`CKAUndefinedWarning` for constant or non-finite
        inputs (or a non-positive HSIC₁ self-term).

    Raises:
        LayerProbeError: if an input is not 2-D, the row counts differ, or n < 4.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((256, 10)), rng.standard_normal((256, 10))
    >>> abs(debiased_cka(x, y)) < 0.02 < linear_cka(x, y)
    True
    """
    x, y = _as_f64(x, "x"), _as_f64(y, "y")
    _check_pair(x, y, 4, "debiased_cka")
    xc, why_x = _prepare(x, "x")
    yc, why_y = _prepare(y, "y")
    if why_x or why_y:
        return _undefined("; ".join(w for w in (why_x, why_y) if w))
    return _ratio(*_hsic1_terms(xc, yc), "debiased CKA")


def _centre_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H for symmetric K, computed as K − row means − column means + grand mean."""
    row = k.mean(dim=1, keepdim=True)
    return k - row - row.T + k.mean()


def _rbf_gram(xc: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """Gaussian Gram matrix with σ² = threshold² · median of all n² squared distances."""
    g = xc @ xc.T
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    # np.median averages the two middle values (torch.median would take the lower one).
    med = float(np.median(d2.numpy()))
    if not med > 0.0:
        return None
    return torch.exp(d2 / (-2.0 * threshold**2 * med))


def _subsample_rows(n: int, max_n: int, seed: int, what: str) -> torch.Tensor | None:
    if n <= max_n:
        return None
    warnings.warn(
        f"{what}: n={n} rows > max_n={max_n}; using a seeded subsample of {max_n} rows "
        f"(the same rows of x and y, seed={seed})",
        CKASubsampleWarning,
        stacklevel=3,
    )
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))
    return torch.from_numpy(idx)


def rbf_cka(x, y, threshold: float = 0.5, max_n: int = 2048, seed: int = 0) -> float:
    """CKA with Gaussian (RBF) kernels (Kornblith et al. 2019), biased HSIC.

    ``K_ij = exp(−‖xᵢ − xⱼ‖² / (2σ²))`` with σ² = threshold² · median of the squared pairwise
    distances (median over all n² entries, diagonal included, as in Kornblith's reference code).
    Costs O(n²) memory and time: above ``max_n`` rows the same seeded subsample of rows of ``x``
    and ``y`` is used and a :class:`CKASubsampleWarning` is emitted.

    Args:
        x: representation, shape (n, d1).
        y: representation, shape (n, d2).
        threshold: bandwidth as a fraction of the median distance (> 0).
        max_n: largest number of rows used without subsampling.
        seed: seed of the subsample.

    Returns:
        RBF CKA in [0, 1], or ``nan`` with a :class:`CKAUndefinedWarning` for constant or
        non-finite inputs (a zero median distance).

    Raises:
        LayerProbeError: bad shapes, n < 2, threshold ≤ 0 or max_n < 2.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((60, 5))
    >>> round(rbf_cka(x, x + 10.0), 12)
    1.0
    """
    if not threshold > 0:
        raise LayerProbeError(f"threshold must be > 0, got {threshold=}")
    if max_n < 2:
        raise LayerProbeError(f"max_n must be ≥ 2, got {max_n=}")
    x, y = _as_f64(x, "x"), _as_f64(y, "y")
    _check_pair(x, y, 2, "rbf_cka")
    idx = _subsample_rows(x.shape[0], max_n, seed, "rbf_cka")
    if idx is not None:
        x, y = x[idx], y[idx]
    xc, why_x = _prepare(x, "x")
    yc, why_y = _prepare(y, "y")
    if why_x or why_y:
        return _undefined("; ".join(w for w in (why_x, why_y) if w))
    k = _rbf_gram(xc, threshold)
    l_ = _rbf_gram(yc, threshold)
    if k is None or l_ is None:
        return _undefined("median squared distance is 0 (more than half the rows coincide)")
    kc, lc = _centre_gram(k), _centre_gram(l_)
    den = _fro(kc) * _fro(lc)
    if not den > 0.0:
        return _undefined("centred RBF Gram matrix is zero")
    return _clip01(_dot(kc, lc) / den)


# --------------------------------------------------------------------------------------------
# Minibatch CKA (Nguyen, Raghu, Kornblith 2021)
# --------------------------------------------------------------------------------------------


class MinibatchCKA:
    """Streaming minibatch CKA: Σᵢ HSIC₁(Kᵢ,Lᵢ) / sqrt(Σᵢ HSIC₁(Kᵢ,Kᵢ) · Σᵢ HSIC₁(Lᵢ,Lᵢ)).

    Each :meth:`update` adds one batch (rows are examples); batches with fewer than 4 rows are
    dropped (HSIC₁ needs n ≥ 4) and counted in ``n_dropped``. This is a different estimator from
    full-data CKA; use :class:`StreamingCKA` for exact full-data linear CKA.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 6))
    >>> m = MinibatchCKA()
    >>> for s in range(0, 200, 50):
    ...     m.update(x[s:s + 50], 2 * x[s:s + 50])
    >>> round(m.compute(), 12)
    1.0
    """

    def __init__(self) -> None:
        self.hxy = 0.0
        self.hxx = 0.0
        self.hyy = 0.0
        self.n_batches = 0
        self.n_dropped = 0
        self._dims: tuple[int, int] | None = None

    def update(self, x_batch, y_batch) -> None:
        """Add one batch.

        Args:
            x_batch: shape (b, d1).
            y_batch: shape (b, d2), the same b examples.
        """
        x, y = _as_f64(x_batch, "x_batch"), _as_f64(y_batch, "y_batch")
        _check_pair(x, y, 0, "MinibatchCKA")
        dims = (x.shape[1], y.shape[1])
        if self._dims is not None and dims != self._dims:
            raise LayerProbeError(
                f"feature dimensions changed between batches: (d1, d2)={dims}, "
                f"earlier {self._dims}"
            )
        self._dims = dims
        if x.shape[0] < 4:
            self.n_dropped += 1
            return
        hxy, hxx, hyy = _hsic1_terms(_centre(x), _centre(y))
        self.hxy += hxy
        self.hxx += hxx
        self.hyy += hyy
        self.n_batches += 1

    def compute(self) -> float:
        """Minibatch CKA over all batches so far (nan + warning if undefined).

        Raises:
            LayerProbeError: if no batch with at least 4 rows was added.
        """
        if self.n_batches == 0:
            raise LayerProbeError(
                f"minibatch CKA needs at least one batch of ≥ 4 rows "
                f"(got {self.n_dropped} smaller batches)"
            )
        return _ratio(self.hxy, self.hxx, self.hyy, "minibatch CKA")


def minibatch_cka(x, y, batch_size: int, seed: int | None = None) -> float:
    """Minibatch CKA over consecutive batches of rows (Nguyen, Raghu, Kornblith 2021).

    Args:
        x: representation, shape (n, d1).
        y: representation, shape (n, d2).
        batch_size: rows per batch (≥ 4); a final batch with fewer than 4 rows is dropped.
        seed: if given, rows are shuffled (the same permutation for x and y) before batching.

    Returns:
        Minibatch CKA (can be slightly negative), or nan with a warning if undefined.

    Raises:
        LayerProbeError: bad shapes, n < 4 or batch_size < 4.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((400, 8))
    >>> y = x + 0.5 * rng.standard_normal((400, 8))
    >>> 0.5 < minibatch_cka(x, y, batch_size=100) < 1.0
    True
    """
    if batch_size < 4:
        raise LayerProbeError(f"batch_size must be ≥ 4 (HSIC₁ needs 4 rows), got {batch_size=}")
    x, y = _as_f64(x, "x"), _as_f64(y, "y")
    _check_pair(x, y, 4, "minibatch_cka")
    n = x.shape[0]
    if seed is not None:
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        x, y = x[perm], y[perm]
    acc = MinibatchCKA()
    for start in range(0, n, batch_size):
        acc.update(x[start : start + batch_size], y[start : start + batch_size])
    return acc.compute()


# --------------------------------------------------------------------------------------------
# Exact streaming linear CKA
# --------------------------------------------------------------------------------------------


@dataclass
class CrossMoments:
    """Centred first and second moments of paired data; enough for exact linear CKA.

    Co-moment matrices are sums over rows of products of deviations from the running mean
    (not divided by n). Merging uses Chan et al.'s pairwise update, so the result is exact
    even when the mean is huge relative to the spread.

    Attributes:
        n: number of rows seen.
        mean_x: column means of x, shape (d1,).
        mean_y: column means of y, shape (d2,).
        cxx: Σ (x − mean_x)(x − mean_x)ᵀ, shape (d1, d1).
        cyy: Σ (y − mean_y)(y − mean_y)ᵀ, shape (d2, d2).
        cxy: Σ (x − mean_x)(y − mean_y)ᵀ, shape (d1, d2).
        min_x, max_x: column minima/maxima of x, shape (d1,) (to detect constant columns).
        min_y, max_y: column minima/maxima of y, shape (d2,).
    """

    n: int
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    cxx: torch.Tensor
    cyy: torch.Tensor
    cxy: torch.Tensor
    min_x: torch.Tensor
    max_x: torch.Tensor
    min_y: torch.Tensor
    max_y: torch.Tensor

    def to_dict(self) -> dict:
        """Plain tensors (``n`` as a 0-d int64 tensor), e.g. for ``torch.save``/safetensors.

        >>> import numpy as np
        >>> m = cross_moments(np.ones((3, 2)) * [[1], [2], [4]], np.ones((3, 1)))
        >>> CrossMoments.from_dict(m.to_dict()).n
        3
        """
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "n"}
        out["n"] = torch.tensor(self.n, dtype=torch.int64)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> CrossMoments:
        """Inverse of :meth:`to_dict` (tensors are converted to float64 on the CPU)."""
        fields = [k for k in cls.__dataclass_fields__ if k != "n"]
        missing = [k for k in ["n", *fields] if k not in d]
        if missing:
            raise LayerProbeError(f"CrossMoments state is missing keys {missing}")
        return cls(n=int(d["n"]), **{k: _as_f64(d[k], k) for k in fields})


def cross_moments(x, y) -> CrossMoments:
    """Moments of one batch, computed centred on the batch mean.

    Args:
        x: shape (b, d1), b ≥ 1.
        y: shape (b, d2).

    >>> import numpy as np
    >>> m = cross_moments(np.array([[1.0], [3.0]]), np.array([[0.0], [2.0]]))
    >>> m.n, float(m.mean_x[0]), float(m.cxy[0, 0])
    (2, 2.0, 2.0)
    """
    x, y = _as_f64(x, "x"), _as_f64(y, "y")
    _check_pair(x, y, 1, "cross_moments")
    xc, yc = _centre(x), _centre(y)
    return CrossMoments(
        n=int(x.shape[0]),
        mean_x=x.mean(dim=0) + (x - x.mean(dim=0)).mean(dim=0),
        mean_y=y.mean(dim=0) + (y - y.mean(dim=0)).mean(dim=0),
        cxx=xc.T @ xc,
        cyy=yc.T @ yc,
        cxy=xc.T @ yc,
        min_x=x.amin(dim=0),
        max_x=x.amax(dim=0),
        min_y=y.amin(dim=0),
        max_y=y.amax(dim=0),
    )


def merge_moments(a: CrossMoments, b: CrossMoments) -> CrossMoments:
    """Combine the moments of two disjoint sets of rows (Chan et al. pairwise update).

    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(6, 2) ** 2
    >>> m = merge_moments(cross_moments(x[:2], x[:2]), cross_moments(x[2:], x[2:]))
    >>> bool(np.allclose(m.cxx.numpy(), np.cov(x.T) * 5))
    True
    """
    if (a.mean_x.shape, a.mean_y.shape) != (b.mean_x.shape, b.mean_y.shape):
        raise LayerProbeError(
            "cannot merge moments of different feature dimensions: "
            f"(d1, d2)={(a.mean_x.shape[0], a.mean_y.shape[0])} vs "
            f"{(b.mean_x.shape[0], b.mean_y.shape[0])}"
        )
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    dx = b.mean_x - a.mean_x
    dy = b.mean_y - a.mean_y
    f = a.n * b.n / n
    return CrossMoments(
        n=n,
        mean_x=a.mean_x + dx * (b.n / n),
        mean_y=a.mean_y + dy * (b.n / n),
        cxx=a.cxx + b.cxx + f * torch.outer(dx, dx),
        cyy=a.cyy + b.cyy + f * torch.outer(dy, dy),
        cxy=a.cxy + b.cxy + f * torch.outer(dx, dy),
        min_x=torch.minimum(a.min_x, b.min_x),
        max_x=torch.maximum(a.max_x, b.max_x),
        min_y=torch.minimum(a.min_y, b.min_y),
        max_y=torch.maximum(a.max_y, b.max_y),
    )


def cka_from_moments(m: CrossMoments) -> float:
    """Linear CKA ``‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F)`` from accumulated moments.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> abs(cka_from_moments(cross_moments(x, x @ np.diag([1.0, 2, 3, 4]))) - 
    ...     linear_cka(x, x @ np.diag([1.0, 2, 3, 4]))) < 1e-12
    True
    """
    if m.n < 2:
        raise LayerProbeError(f"linear CKA needs at least 2 rows, got n={m.n}")
    cxx, cyy, cxy = m.cxx, m.cyy, m.cxy
    if not (bool(torch.isfinite(cxy).all()) and bool(torch.isfinite(cxx).all())
            and bool(torch.isfinite(cyy).all())):
        return _undefined("accumulated moments contain NaN or Inf (non-finite input)")
    cx = _constant_columns(m.min_x, m.max_x)
    cy = _constant_columns(m.min_y, m.max_y)
    if bool(cx.any()) or bool(cy.any()):
        cxx, cyy, cxy = cxx.clone(), cyy.clone(), cxy.clone()
        cxx[cx, :] = 0.0
        cxx[:, cx] = 0.0
        cyy[cy, :] = 0.0
        cyy[:, cy] = 0.0
        cxy[cx, :] = 0.0
        cxy[:, cy] = 0.0
    nxx, nyy = _fro(cxx), _fro(cyy)
    if not (nxx > 0.0 and nyy > 0.0):
        which = " and ".join(w for w, v in (("x", nxx), ("y", nyy)) if not v > 0.0)
        return _undefined(f"{which} is constant (zero variance after centring)")
    return _clip01((_fro(cxy) / math.sqrt(nxx * nyy)) ** 2)


class StreamingCKA:
    """Exact full-data linear CKA accumulated over batches in O(d²) memory.

    Each batch's moments are computed centred on the batch mean and merged with Chan et al.'s
    pairwise update, so the result equals :func:`linear_cka` on the concatenated data (to ~1e-12
    relative) even when the features' mean is huge compared with their spread.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5)) + 1e4
    >>> y = x @ rng.standard_normal((5, 3))
    >>> s = StreamingCKA()
    >>> for start in range(0, 1000, 100):
    ...     s.update(x[start:start + 100], y[start:start + 100])
    >>> abs(s.compute() - linear_cka(x - 1e4, y)) < 1e-9
    True
    """

    def __init__(self, state: CrossMoments | None = None) -> None:
        self.state: CrossMoments | None = state

    def update(self, x_batch, y_batch) -> None:
        """Add a batch.

        Args:
            x_batch: shape (b, d1).
            y_batch: shape (b, d2), the same b examples; empty batches are ignored.
        """
        x, y = _as_f64(x_batch, "x_batch"), _as_f64(y_batch, "y_batch")
        _check_pair(x, y, 0, "StreamingCKA")
        if self.state is not None and (x.shape[1], y.shape[1]) != (
            self.state.mean_x.shape[0],
            self.state.mean_y.shape[0],
        ):
            raise LayerProbeError(
                f"feature dimensions changed between batches: x_batch.shape={tuple(x.shape)}, "
                f"y_batch.shape={tuple(y.shape)}, earlier (d1, d2)="
                f"{(self.state.mean_x.shape[0], self.state.mean_y.shape[0])}"
            )
        if x.shape[0] == 0:
            return
        batch = cross_moments(x, y)
        self.state = batch if self.state is None else merge_moments(self.state, batch)

    def merge(self, other: StreamingCKA) -> StreamingCKA:
        """Fold another accumulator (disjoint rows) into this one; returns ``self``."""
        if other.state is not None:
            self.state = other.state if self.state is None else merge_moments(self.state, other.state)
        return self

    @property
    def n(self) -> int:
        """Number of rows seen."""
        return 0 if self.state is None else self.state.n

    def compute(self) -> float:
        """Linear CKA of all rows seen (nan + :class:`CKAUndefinedWarning` if undefined).

        Raises:
            LayerProbeError: if fewer than 2 rows were seen.
        """
        if self.state is None:
            raise LayerProbeError("StreamingCKA.compute() called before any rows were added")
        return cka_from_moments(self.state)


# --------------------------------------------------------------------------------------------
# Cross-layer CKA maps
# --------------------------------------------------------------------------------------------


def _check_list_shapes(lists: dict[str, list]) -> int:
    """Validate that every item of every list is 2-D with the same n; return n (≥ 2)."""
    shapes = {}
    for name, items in lists.items():
        for i, t in enumerate(items):
            shape = tuple(t.shape) if hasattr(t, "shape") else np.shape(t)
            if len(shape) != 2:
                raise LayerProbeError(
                    f"{name}[{i}] must be 2-D (n examples × d features), got {name}[{i}].shape={shape}"
                )
            shapes[name, i] = shape
    first = next(iter(shapes))
    n = shapes[first][0]
    bad = [f"{nm}[{i}].shape={s}" for (nm, i), s in shapes.items() if s[0] != n]
    if bad:
        raise LayerProbeError(
            f"all representations must have the same number of rows n={n} "
            f"({first[0]}[0].shape={shapes[first]}); differing: " + ", ".join(bad)
        )
    if n < 2:
        raise LayerProbeError(f"linear CKA needs at least 2 rows, got {first[0]}[0].shape={shapes[first]}")
    return n


def _map_operands(items, name: str, gram: bool, reasons: list[str]) -> list:
    """Per matrix: (operand, self-norm) or None if undefined. Each input is converted, centred
    and its self-product formed exactly once; the float64 copy of the input is not kept."""
    out = []
    for i, t in enumerate(items):
        tf, own = _as_f64_owned(t, f"{name}[{i}]")
        tc, why = _prepare(tf, f"{name}[{i}]", inplace=own)
        if why:
            reasons.append(why)
            out.append(None)
        elif gram:
            k = tc @ tc.T
            out.append((k, _fro(k)))
        else:
            out.append((tc, _fro(tc.T @ tc)))
    return out


def _map_from_operands(fx: list, fy: list, gram: bool, symmetric: bool) -> np.ndarray:
    result = np.full((len(fx), len(fy)), np.nan)
    for i, a in enumerate(fx):
        if a is None:
            continue
        for j, b in enumerate(fy):
            if b is None or (symmetric and j < i):
                continue
            if symmetric and i == j:
                result[i, j] = 1.0
                continue
            cross = _dot(a[0], b[0]) if gram else _fro(b[0].T @ a[0]) ** 2
            result[i, j] = _clip01(cross / (a[1] * b[1]))
            if symmetric:
                result[j, i] = result[i, j]
    return result


def cka_matrix(xs: Sequence, ys: Sequence | None = None) -> np.ndarray:
    """Linear CKA between every representation in ``xs`` and every one in ``ys``.

    Each matrix is centred once and its self-norm computed once; each pair then costs one cross
    product. When n ≤ the mean feature width the centred Gram matrices K_i (n×n) are formed once
    and CKA = ⟨K_i, L_j⟩/(‖K_i‖‖L_j‖); otherwise the feature form ‖YᵀX‖²/(‖XᵀX‖‖YᵀY‖) is used.
    Equal to :func:`linear_cka` pairwise (to ~1e-12).

    Args:
        xs: sequence of representations, each (n, d_i), all with the same n.
        ys: sequence of representations, each (n, e_j); None means ``xs`` against itself
            (symmetric, diagonal exactly 1 where defined).

    Returns:
        float64 array of shape (len(xs), len(ys)); rows/columns of undefined (constant or
        non-finite) representations are nan, with one :class:`CKAUndefinedWarning`.

    Raises:
        LayerProbeError: empty list, a non-2-D input or differing row counts.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((40, 6))
    >>> m = cka_matrix([a, 2 * a, np.tanh(a)])
    >>> m.shape, float(m[0, 1]), bool(m[0, 2] < 1)
    ((3, 3), 1.0, True)
    """
    symmetric = ys is None
    xs_l = list(xs)
    ys_l = xs_l if symmetric else list(ys)
    if not xs_l or not ys_l:
        raise LayerProbeError(f"cka_matrix needs non-empty lists, got {len(xs_l)=}, {len(ys_l)=}")
    # Validate all shapes before any heavy work; convert one matrix at a time afterwards so
    # that only the centred copies (or Gram matrices) are held, not float64 copies of inputs.
    n = _check_list_shapes({"xs": xs_l} if symmetric else {"xs": xs_l, "ys": ys_l})
    widths = [np.shape(t)[1] if not hasattr(t, "shape") else t.shape[1] for t in xs_l + ([] if symmetric else ys_l)]
    gram = n <= float(np.mean(widths))
    reasons: list[str] = []
    fx = _map_operands(xs_l, "xs", gram, reasons)
    fy = fx if symmetric else _map_operands(ys_l, "ys", gram, reasons)
    result = _map_from_operands(fx, fy, gram, symmetric)
    if reasons:
        _undefined("; ".join(reasons))
    return result


def cka_maps(xs: Sequence, ys: Sequence) -> dict[str, np.ndarray]:
    """The three cross-layer linear CKA maps of two models, sharing all per-entry work.

    Each representation is converted, centred and its self-product (XᵀX, or the Gram matrix
    XXᵀ when n ≤ the mean width) formed **once**; the three maps then only add cross products.
    Equal to ``cka_matrix(xs, ys)``, ``cka_matrix(xs)`` and ``cka_matrix(ys)``.

    Args:
        xs: representations of model A, each (n, d_i) (e.g. embeddings then every block).
        ys: representations of model B, each (n, e_j), the same n examples.

    Returns:
        ``{"xy": (len(xs), len(ys)), "xx": (len(xs), len(xs)), "yy": (len(ys), len(ys))}`` float64
        arrays; nan rows/columns for undefined inputs, with one :class:`CKAUndefinedWarning`.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = [rng.standard_normal((30, 4)) for _ in range(3)]
    >>> m = cka_maps(a, [2 * t for t in a])
    >>> [m[k].shape for k in ("xy", "xx", "yy")], bool(np.allclose(np.diag(m["xy"]), 1))
    ([(3, 3), (3, 3), (3, 3)], True)
    """
    xs_l, ys_l = list(xs), list(ys)
    if not xs_l or not ys_l:
        raise LayerProbeError(f"cka_maps needs non-empty lists, got {len(xs_l)=}, {len(ys_l)=}")
    n = _check_list_shapes({"xs": xs_l, "ys": ys_l})
    widths = [t.shape[1] if hasattr(t, "shape") else np.shape(t)[1] for t in xs_l + ys_l]
    gram = n <= float(np.mean(widths))
    reasons: list[str] = []
    fx = _map_operands(xs_l, "xs", gram, reasons)
    fy = _map_operands(ys_l, "ys", gram, reasons)
    out = {"xy": _map_from_operands(fx, fy, gram, False),
           "xx": _map_from_operands(fx, fx, gram, True),
           "yy": _map_from_operands(fy, fy, gram, True)}
    if reasons:
        _undefined("; ".join(reasons))
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------


def _weighted_linear_cka(k: torch.Tensor, l_: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Linear CKA of resampled data, one value per row of ``w``, from Gram matrices.

    A resample that takes row i ``w[b, i]`` times has HSIC ∝ tr(M K M L) with
    M = diag(w) − wwᵀ/N, N = Σw, i.e. ``wᵀ(K∘L)w − 2 (w∘Kw)·(Lw)/N + (wᵀKw)(wᵀLw)/N²``.

    Args:
        k: Gram matrix of (centred) x, shape (n, n).
        l_: Gram matrix of (centred) y, shape (n, n).
        w: non-negative resampling counts, shape (B, n).

    Returns:
        shape (B,); nan where a resample's representation is constant.
    """
    n = k.shape[0]
    total = w.sum(dim=1)
    # One GEMM against [K∘L | K∘K | L∘L | K | L] instead of five (about 2x faster).
    p = w @ torch.cat([k * l_, k * k, l_ * l_, k, l_], dim=1)
    q_kl, q_kk, q_ll = ((p[:, i * n:(i + 1) * n] * w).sum(dim=1) for i in range(3))
    kw, lw = p[:, 3 * n:4 * n], p[:, 4 * n:]
    wkw, wlw = (w * kw).sum(dim=1), (w * lw).sum(dim=1)
    hxy = q_kl - 2.0 * (w * kw * lw).sum(dim=1) / total + wkw * wlw / total**2
    hxx = q_kk - 2.0 * (w * kw * kw).sum(dim=1) / total + wkw**2 / total**2
    hyy = q_ll - 2.0 * (w * lw * lw).sum(dim=1) / total + wlw**2 / total**2
    den = torch.sqrt(hxx * hyy)
    # Relative floor: a resample whose centred data vanish (e.g. one distinct row) is undefined.
    scale = torch.sqrt(q_kk * q_ll)
    ok = (hxx > 0) & (hyy > 0) & (den > 1e-12 * scale)
    out = torch.full_like(hxy, float("nan"))
    out[ok] = (hxy[ok] / den[ok]).clamp(0.0, 1.0)
    return out


def bootstrap_cka(
    x,
    y,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups=None,
    max_n: int = 2048,
) -> tuple[float, float]:
    """Percentile bootstrap interval for linear CKA, resampling probe examples.

    Resamples are drawn with ``numpy.random.default_rng(seed)``, so the interval is
    deterministic for a given seed. Each resample is evaluated from the n×n Gram matrices
    (computed once) in O(n²) without copying data, so n is capped: above ``max_n`` rows a seeded
    subsample of rows (or of whole groups) is used and a :class:`CKASubsampleWarning` is emitted;
    the interval then describes a probe set of that smaller size (it is wider).

    Args:
        x: representation, shape (n, d1).
        y: representation, shape (n, d2).
        n_boot: number of bootstrap resamples.
        level: coverage of the interval, in (0, 1).
        seed: random seed.
        groups: optional integer labels of shape (n,): rows are tokens and ``groups[i]`` is the
            example row i belongs to; examples are resampled, keeping all their tokens.
        max_n: largest number of rows used without subsampling.

    Returns:
        (low, high) percentiles of the bootstrap distribution; (nan, nan) with a
        :class:`CKAUndefinedWarning` if the data are constant/non-finite.

    Raises:
        LayerProbeError: bad shapes, fewer than 2 rows or groups, bad level/n_boot/groups.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 5))
    >>> y = x + rng.standard_normal((200, 5))
    >>> lo, hi = bootstrap_cka(x, y, n_boot=200)
    >>> bool(lo < linear_cka(x, y) < hi)
    True
    """
    if not 0.0 < level < 1.0:
        raise LayerProbeError(f"level must be in (0, 1), got {level=}")
    if n_boot < 1:
        raise LayerProbeError(f"n_boot must be ≥ 1, got {n_boot=}")
    x, y = _as_f64(x, "x"), _as_f64(y, "y")
    _check_pair(x, y, 2, "bootstrap_cka")
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    if groups is None:
        gid = np.arange(n)
    else:
        g = np.asarray(groups)
        if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
            raise LayerProbeError(
                f"groups must be an integer array of shape ({n},), got groups.shape={g.shape}, "
                f"dtype={g.dtype}"
            )
        gid = np.unique(g, return_inverse=True)[1].reshape(-1)
    n_groups = int(gid.max()) + 1
    if n > max_n:
        # Keep a seeded random set of groups (rows when ungrouped) with at most max_n rows.
        order = rng.permutation(n_groups)
        sizes = np.bincount(gid, minlength=n_groups)[order]
        keep_g = order[: max(2, int(np.searchsorted(np.cumsum(sizes), max_n, side="right")))]
        rows = np.flatnonzero(np.isin(gid, keep_g))
        warnings.warn(
            f"bootstrap_cka: n={n} rows > max_n={max_n}; using a seeded subsample of "
            f"{rows.size} rows ({keep_g.size} of {n_groups} examples)",
            CKASubsampleWarning,
            stacklevel=2,
        )
        x, y = x[torch.from_numpy(rows)], y[torch.from_numpy(rows)]
        gid = np.unique(gid[rows], return_inverse=True)[1].reshape(-1)
        n_groups = int(gid.max()) + 1
    if n_groups < 2:
        raise LayerProbeError(f"bootstrap needs at least 2 examples (groups), got {n_groups}")
    xc, why_x = _prepare(x, "x")
    yc, why_y = _prepare(y, "y")
    if why_x or why_y:
        v = _undefined("; ".join(w for w in (why_x, why_y) if w))
        return v, v
    k, l_ = xc @ xc.T, yc @ yc.T
    gid_t = torch.from_numpy(gid)
    values = []
    chunk = max(1, min(n_boot, 2**22 // max(5 * n, 1)))  # the (chunk × 5n) product stays ≤ 32 MB
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + n_groups * np.arange(b)[:, None]).reshape(-1)
        counts = torch.from_numpy(np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups))
        w = counts.to(torch.float64)[:, gid_t]
        values.append(_weighted_linear_cka(k, l_, w).numpy())
    vals = np.concatenate(values)
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        v = _undefined("every bootstrap resample is degenerate")
        return v, v
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_cka_many(pairs: Sequence, **kwargs) -> list[tuple[float, float]]:
    """:func:`bootstrap_cka` for several (x, y) pairs with the same seed.

    With equal n the pairs share their resamples (common random numbers), so differences between
    pairs are not blurred by different resampling noise.

    Args:
        pairs: sequence of (x, y), each x (n, d1) and y (n, d2).
        **kwargs: passed to :func:`bootstrap_cka`.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((50, 3))
    >>> [len(ci) for ci in bootstrap_cka_many([(x, x), (x, x ** 2)], n_boot=50)]
    [2, 2]
    """
    return [bootstrap_cka(x, y, **kwargs) for x, y in pairs]
