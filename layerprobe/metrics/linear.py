"""Linear and debiased linear CKA of one pair of representations.

* linear CKA ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` with column-centred X, Y (feature form, O(n·d²),
  computed from row chunks: :mod:`~layerprobe.metrics.streaming`), or ``⟨K, L⟩ / (‖K‖‖L‖)`` with
  centred Gram matrices K = XXᵀ, L = YYᵀ (Gram form, O(n²·d): :mod:`~layerprobe.metrics.gram`);
  each call picks the cheaper one, both give the same value (Kornblith et al. 2019).
* debiased CKA: the same ratio with the unbiased estimator HSIC₁ (Song et al. 2012).
"""

from __future__ import annotations

import math

import torch

from layerprobe.metrics.core import (
    Matrix,
    as_cpu,
    as_f64_owned,
    check_pair,
    clip01,
    fro,
    prepare,
    undefined,
)
from layerprobe.metrics.gram import gram_inner, row_blocks
from layerprobe.metrics.streaming import _Moments, shift_of

__all__ = ["debiased_cka", "linear_cka"]


def use_gram(n: int, d1: int, d2: int) -> bool:
    """Whether the Gram form costs fewer multiply-adds: n²(d1+d2)·(b+1)/(2b) for b row blocks
    (:mod:`~layerprobe.metrics.gram`) against n(d1² + d2² + d1·d2) for the feature form."""
    b = len(row_blocks(n, 2))
    return n * n * (d1 + d2) * (b + 1) / (2 * b) < n * (d1 * d1 + d2 * d2 + d1 * d2)


def linear_cka(x: Matrix, y: Matrix) -> float:
    """Linear CKA between two representations of the same n examples.

    Computes ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` after column-centring (or the identical Gram form
    ``⟨K, L⟩/(‖K‖‖L‖)`` when that costs fewer multiply-adds, roughly n < 1.5·(d1 + d2)). Similarity in [0, 1].
    Arithmetic is float64 whatever the input dtype; the feature form converts a chunk of rows at
    a time, so its extra memory is O(d²), not a float64 copy of the input.

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
    xt, yt = as_cpu(x, "x"), as_cpu(y, "y")
    check_pair(xt, yt, 2, "linear_cka")
    n, d1 = xt.shape
    d2 = yt.shape[1]
    if not use_gram(n, d1, d2):
        m = _Moments(shift_of(xt), shift_of(yt))
        m.add(xt, yt)
        return m.cka()
    (xf, own_x), (yf, own_y) = as_f64_owned(x, "x"), as_f64_owned(y, "y")
    xc, why_x = prepare(xf, "x", inplace=own_x)
    yc, why_y = prepare(yf, "y", inplace=own_y)
    if why_x or why_y:
        return undefined("; ".join(w for w in (why_x, why_y) if w))
    assert xc is not None and yc is not None  # prepare gives a tensor whenever it gives no reason
    g = gram_inner([xc, yc])
    return clip01(float(g[0, 1]) / math.sqrt(float(g[0, 0]) * float(g[1, 1])))


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
    if use_gram(n, d1, d2):
        g = gram_inner([xc, yc])
        sxy, sxx, syy = float(g[0, 1]), float(g[0, 0]), float(g[1, 1])
    else:
        sxy = fro(yc.T @ xc) ** 2
        sxx = fro(xc.T @ xc) ** 2
        syy = fro(yc.T @ yc) ** 2
    return _hsic1(sxy, rx, ry, n), _hsic1(sxx, rx, rx, n), _hsic1(syy, ry, ry, n)


def _ratio(hxy: float, hxx: float, hyy: float, what: str) -> float:
    if not (math.isfinite(hxy) and math.isfinite(hxx) and math.isfinite(hyy)):
        return undefined(f"{what} is not finite (NaN or Inf in the input)", stacklevel=4)
    if hxx <= 0.0 or hyy <= 0.0:
        return undefined(
            f"{what} self-similarity is not positive ({hxx=:.3g}, {hyy=:.3g})", stacklevel=4
        )
    return hxy / math.sqrt(hxx * hyy)


def debiased_cka(x: Matrix, y: Matrix) -> float:
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
    (xf, own_x), (yf, own_y) = as_f64_owned(x, "x"), as_f64_owned(y, "y")
    check_pair(xf, yf, 4, "debiased_cka")
    xc, why_x = prepare(xf, "x", inplace=own_x)
    yc, why_y = prepare(yf, "y", inplace=own_y)
    if why_x or why_y:
        return undefined("; ".join(w for w in (why_x, why_y) if w))
    assert xc is not None and yc is not None  # prepare gives a tensor whenever it gives no reason
    return _ratio(*_hsic1_terms(xc, yc), "debiased CKA")
