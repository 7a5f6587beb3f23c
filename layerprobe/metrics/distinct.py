"""How many distinct points a CKA rests on, and the fewest it needs.

Linear CKA compares the centred Gram matrices of two representations. With ``k`` distinct rows
(duplicates counted once, whatever their multiplicity) the centred representation has rank at
most ``k - 1``, so:

* ``k = 2``: both centred representations are multiples of one vector with the *same* weights on
  the examples, so linear CKA is exactly 1, whatever the two models do;
* ``k = 3``: CKA compares two triangles; a bootstrap resample of three points has at most two
  distinct ones with probability ``1 - 3!/3³ = 78%`` (CKA 1 again), so no interval can be given;
* ``k >= 4``: the smallest count for which the debiased HSIC estimator (Song et al. 2012; its
  normaliser is ``n (n - 3)``) is defined, and the first at which both estimators can tell a
  changed representation from an unchanged one.

So :data:`MIN_DISTINCT_ROWS` is 4: below it CKA is undefined and no freeze advice is given. It is
a floor, not a guarantee: with few examples compared with the width, linear CKA of unrelated
representations is still biased towards 1 (independent Gaussian 384-wide representations give
about 0.98 on 8 examples, 0.92 on 32), which is what the bootstrap interval is for.

>>> import torch
>>> x = torch.randn(6, 3, dtype=torch.float64)
>>> count_distinct_rows(torch.cat([x[:1].repeat(5, 1), x[1:2]]))  # five copies of one row and one other
2
>>> count_distinct_rows(x, x + 1e-9)  # rounding noise does not make rows distinct
6
"""

from __future__ import annotations

import torch

__all__ = ["MIN_DISTINCT_ROWS", "count_distinct_rows"]

#: the fewest distinct representation rows (probe examples) for which CKA is reported (see above)
MIN_DISTINCT_ROWS = 4

#: rows closer than this, relative to the spread of the data, are the same point: duplicates of one
#: text differ by rounding only (about 1e-7 in float32, 1e-4 in bfloat16, with other padding)
RTOL = 1e-3


def count_distinct_rows(*mats: torch.Tensor, rtol: float = RTOL, n_proj: int = 4, seed: int = 0,
                        max_rows: int = 4096) -> int:
    """A lower bound on the number of distinct rows of ``mats`` side by side (row i of each is one point).

    Each matrix is centred and divided by the root mean square of its values (rounding noise is
    relative to the values, not to their spread), so every side weighs the same; the points are projected on ``n_proj`` seeded random directions, and on each the sorted values are cut where
    two neighbours are more than ``5 * rtol`` apart (five standard deviations of the projection of
    a difference of relative size ``rtol``). Near-duplicates are therefore never split; genuinely
    distinct rows may be merged when very many of them crowd one projection, so the count can be
    low for large ``n`` but never high. The largest count over the projections is returned. Past
    ``max_rows`` rows, evenly spaced rows are counted (still a lower bound): O(min(n, max_rows) d n_proj).

    Args:
        mats: ``(n, d_i)`` tensors with the same ``n``.
        rtol: relative resolution.
        max_rows: rows counted at most.
        n_proj: random projections.
        seed: seed of the projections.

    Returns:
        The count, between 1 and ``n`` (0 for no rows).
    """
    n = int(mats[0].shape[0])
    if n <= 1:
        return n
    idx = torch.linspace(0, n - 1, max_rows).round().long().unique() if n > max_rows else None
    g = torch.Generator().manual_seed(seed)
    proj = torch.zeros(n if idx is None else len(idx), n_proj, dtype=torch.float64)
    for m in mats:
        m = m.detach().reshape(n, -1)
        z = (m if idx is None else m[idx]).to("cpu", torch.float64)
        scale = float(z.pow(2).mean().sqrt())  # the size of the values, which rounding noise is relative to
        if not scale > 0.0:  # all zero (or non-finite: left to the callers' own checks)
            continue
        z = (z - z.mean(0, keepdim=True)) / scale
        u = torch.randn(z.shape[1], n_proj, generator=g, dtype=torch.float64)
        u = u / u.norm(dim=0, keepdim=True)
        # a difference of relative size rtol (norm rtol * sqrt(d) here) projects to about N(0, rtol²)
        proj += z @ u
    proj /= len(mats) ** 0.5
    values, order = torch.sort(proj, dim=0)
    # on each projection, a cluster ends where the gap to the next value is wide; a row's label is its
    # cluster on every projection, and rows are the same point only when all their labels agree
    starts = torch.cat([torch.zeros(1, proj.shape[1], dtype=torch.long),
                        (torch.diff(values, dim=0) > 5.0 * rtol).long()]).cumsum(0)
    labels = torch.empty_like(starts)
    labels.scatter_(0, order, starts)
    return int(torch.unique(labels, dim=0).shape[0])
