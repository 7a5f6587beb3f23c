"""Intervals for linear CKA, resampling probe examples (or groups of rows).

A plain percentile bootstrap is wrong for CKA: a resample repeats rows, and the repeated rows
weigh twice in the Gram diagonals, so CKA on resamples sits above CKA on the data (on a 64-text
probe of a 384-wide model often by more than the spread: the "lower bound" above the estimate).
:func:`bootstrap_cka` removes that shift (the percentiles are recentred on the estimate) and never
reports a narrower interval than the delete-one jackknife's (resampling without repeats), which
the bootstrap undershoots on few high-dimensional rows. What it covers is the CKA this probe size
gives on probes drawn like this one: the plug-in estimator's own finite-sample bias (about d/n
above the population value for weakly related data) is not in the interval; see docs/method.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.core import (
    CKASubsampleWarning,
    Matrix,
    as_f64,
    check_pair,
    prepare,
    undefined,
)

__all__ = ["bootstrap_cka"]


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
    x: Matrix,
    y: Matrix,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | Sequence[int] | None = None,
    max_n: int = 2048,
) -> tuple[float, float]:
    """Bias-corrected bootstrap interval for linear CKA, resampling probe examples.

    The interval is ``[θ̂ − (m − q_lo), θ̂ + (q_hi − m)]``, with θ̂ the linear CKA of the data, m the
    median and q_lo, q_hi the ``(1 ± level)/2`` percentiles of CKA over the resamples (the
    resampling shift removed, so the interval always contains θ̂), widened where needed to the
    delete-one jackknife interval ``θ̂ ± z·se_jack`` (examples, or groups, left out one at a time).

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
        (low, high) with ``low ≤ linear_cka(x, y) ≤ high``; (nan, nan) with a
        :class:`CKAUndefinedWarning` if the data are constant/non-finite.

    Raises:
        LayerProbeError: bad shapes, fewer than 2 rows or groups, bad level/n_boot/groups.

    >>> import numpy as np
    >>> from layerprobe.metrics import linear_cka
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 5))
    >>> y = x + rng.standard_normal((200, 5))
    >>> lo, hi = bootstrap_cka(x, y, n_boot=200)
    >>> bool(lo < linear_cka(x, y) < hi)
    True
    >>> x = rng.standard_normal((64, 384)) / np.arange(1, 385)      # few wide rows, CKA near 1
    >>> y = x + 0.04 * rng.standard_normal((64, 384))
    >>> lo, hi = bootstrap_cka(x, y)
    >>> print(f"{lo:.4f} <= {linear_cka(x, y):.4f} <= {hi:.4f}")
    0.9865 <= 0.9929 <= 0.9959
    """
    if not 0.0 < level < 1.0:
        raise LayerProbeError(f"level must be in (0, 1), got {level=}")
    if n_boot < 1:
        raise LayerProbeError(f"n_boot must be ≥ 1, got {n_boot=}")
    x, y = as_f64(x, "x"), as_f64(y, "y")
    check_pair(x, y, 2, "bootstrap_cka")
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    from layerprobe.metrics.linear import linear_cka

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined CKA is reported below, once
        estimate = linear_cka(x, y)
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
    xc, why_x = prepare(x, "x")
    yc, why_y = prepare(y, "y")
    if why_x or why_y:
        v = undefined("; ".join(w for w in (why_x, why_y) if w))
        return v, v
    assert xc is not None and yc is not None  # prepare gives a tensor whenever it gives no reason
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
    if finite.size == 0 or not np.isfinite(estimate):
        v = undefined("every bootstrap resample is degenerate")
        return v, v
    alpha = (1.0 - level) / 2.0
    q_lo, mid, q_hi = np.quantile(finite, [alpha, 0.5, 1.0 - alpha])
    half = _jackknife_se(k, l_, gid_t, n_groups) * NormalDist().inv_cdf(1.0 - alpha)
    low = min(estimate - (mid - q_lo), estimate - half)
    high = max(estimate + (q_hi - mid), estimate + half)
    return float(max(low, 0.0)), float(min(high, 1.0))


def _jackknife_se(k: torch.Tensor, l_: torch.Tensor, gid: torch.Tensor, n_groups: int) -> float:
    """Delete-one-group jackknife standard error of linear CKA (0 where it is undefined)."""
    vals = []
    chunk = max(1, 2**22 // max(5 * k.shape[0], 1))
    for start in range(0, n_groups, chunk):
        g = torch.arange(start, min(n_groups, start + chunk))
        w = (gid[None, :] != g[:, None]).to(torch.float64)
        vals.append(_weighted_linear_cka(k, l_, w).numpy())
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return 0.0
    return float(np.sqrt((v.size - 1) / v.size * ((v - v.mean()) ** 2).sum()))
