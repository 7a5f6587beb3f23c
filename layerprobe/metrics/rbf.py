"""RBF (Gaussian kernel) CKA, biased HSIC (Kornblith et al. 2019). O(n²): large n is subsampled."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.core import (
    CKASubsampleWarning,
    Matrix,
    as_f64,
    check_pair,
    clip01,
    dot,
    fro,
    prepare,
    undefined,
)

__all__ = ["rbf_cka"]


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


def rbf_cka(x: Matrix, y: Matrix, threshold: float = 0.5, max_n: int = 2048, seed: int = 0) -> float:
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
    x, y = as_f64(x, "x"), as_f64(y, "y")
    check_pair(x, y, 2, "rbf_cka")
    idx = _subsample_rows(x.shape[0], max_n, seed, "rbf_cka")
    if idx is not None:
        x, y = x[idx], y[idx]
    xc, why_x = prepare(x, "x")
    yc, why_y = prepare(y, "y")
    if why_x or why_y:
        return undefined("; ".join(w for w in (why_x, why_y) if w))
    assert xc is not None and yc is not None  # prepare gives a tensor whenever it gives no reason
    k = _rbf_gram(xc, threshold)
    l_ = _rbf_gram(yc, threshold)
    if k is None or l_ is None:
        return undefined("median squared distance is 0 (more than half the rows coincide)")
    kc, lc = _centre_gram(k), _centre_gram(l_)
    den = fro(kc) * fro(lc)
    if not den > 0.0:
        return undefined("centred RBF Gram matrix is zero")
    return clip01(dot(kc, lc) / den)
