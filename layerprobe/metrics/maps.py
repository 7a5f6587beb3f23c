"""Cross-layer linear CKA maps: every representation of one model against every one of another.

Each representation is converted and centred once, into its column slice of one float64 matrix Z.
All the maps need are the inner products ``G[a, b] = ‖MₐᵀM_b‖²_F = ⟨MₐMₐᵀ, M_bM_bᵀ⟩`` of the
centred matrices, computed by whichever form costs fewer multiply-adds *for the whole map*:

* feature form: for each a, one product of Mₐ with the contiguous columns of every M_b it needs
  (Σₐ n·dₐ·Σ_b d_b);
* Gram form (:mod:`~layerprobe.metrics.gram`): every Gram matrix once, blockwise, then all inner
  products together (m·n²·d̄·(b+1)/(2b) + m²n²). For an L×L map it stays cheaper than the
  feature form up to n ≈ (L+2)/2·d, far beyond the single-pair rule n < d1 + d2.

Both give the same values as :func:`~layerprobe.metrics.linear.linear_cka` pairwise (~1e-12).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.core import Matrix, as_f64, clip01, column_range, constant_columns, prepare, undefined
from layerprobe.metrics.gram import gram_inner, row_blocks

__all__ = ["cka_maps", "cka_matrix"]


def _shape(t: Matrix) -> tuple:
    return tuple(t.shape) if hasattr(t, "shape") else np.shape(t)


def _check_list_shapes(lists: dict[str, list]) -> int:
    """Validate that every item of every list is 2-D with the same n; return n (≥ 2)."""
    shapes = {}
    for name, items in lists.items():
        for i, t in enumerate(items):
            shape = _shape(t)
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


def _centre_into(view: torch.Tensor, src: torch.Tensor, name: str) -> str | None:
    """Centre ``src`` (a float CPU tensor of any precision) into the float64 ``view`` as
    :func:`~layerprobe.metrics.core.centre` does, in fewer passes over memory; return why the
    item is undefined, or None.

    The column range (constant columns) and a first mean are read from ``src`` in its own dtype;
    the mean of the float64 residual then centres to float64 rounding whatever the first mean's
    error. NaN/Inf show in that residual mean, a constant item in the range, so no norm pass is
    needed; CKA is scale invariant, so the item is rescaled only where its size could overflow
    the fourth powers of the Gram inner products.
    """
    shape = tuple(src.shape)
    if shape[1] == 0:
        view.zero_()
        return f"{name} is constant (zero variance after centring), {name}.shape={shape}"
    lo, hi = column_range(src)
    const = constant_columns(lo, hi)
    mean = src.mean(dim=0)  # in src's dtype: cheap, and only a first guess
    if not bool(torch.isfinite(mean).all()):  # e.g. float32 overflow of large finite values
        mean = src.to(torch.float64).mean(dim=0)
    view.copy_(src).sub_(mean.to(torch.float64))
    resid = view.mean(dim=0, keepdim=True)
    if not bool(torch.isfinite(resid).all()):
        return f"{name} contains NaN or Inf"
    view.sub_(resid)
    if bool(const.all()):
        return f"{name} is constant (zero variance after centring), {name}.shape={shape}"
    if bool(const.any()):
        view[:, const] = 0.0
    size = float(torch.maximum(lo.abs(), hi.abs()).max())
    if not 1e-25 < size < 1e25:
        view.div_(torch.linalg.vector_norm(view))
    return None


def _centred_block(items: list, names: list[str], n: int,
                   reasons: list[str]) -> tuple[torch.Tensor, np.ndarray, list[bool]]:
    """Z (n × Σd, float64) with each item centred in its column slice; the column offsets; and
    which items are defined."""
    widths = [_shape(t)[1] for t in items]
    offs = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    z = torch.empty(n, int(offs[-1]), dtype=torch.float64)
    ok = []
    for k, (t, name) in enumerate(zip(items, names)):
        view = z[:, offs[k]:offs[k + 1]]
        src = t.detach().to("cpu") if isinstance(t, torch.Tensor) else None
        if src is not None and src.is_floating_point():
            why = _centre_into(view, src, name)
        else:
            view.copy_(src if src is not None else as_f64(t, name))
            _, why = prepare(view, name, inplace=True)
        if why:
            reasons.append(why)
        ok.append(why is None)
    return z, offs, ok


def _inner(z: torch.Tensor, offs: np.ndarray, ranges: list[tuple[int, int]], form: str | None = None) -> np.ndarray:
    """G[a, b] for b in ``ranges[a]`` (a half-open index range) and G[a, a], in the cheaper form
    (the Gram form gives every pair anyway) unless ``form`` ("gram" or "feature") says which."""
    m, n = len(offs) - 1, z.shape[0]
    w = np.diff(offs)
    ops = [z[:, offs[k]:offs[k + 1]] for k in range(m)]
    b = len(row_blocks(n, m))
    gram_cost = float(w.sum()) * n * n * (b + 1) / (2 * b) + m * m * n * n / 2
    feat_cost = sum(float(w[a]) * n * (w[lo:hi].sum() + (0 if lo <= a < hi else w[a]))
                    for a, (lo, hi) in enumerate(ranges))
    if form == "gram" or (form is None and gram_cost < feat_cost):
        return gram_inner(ops).numpy()
    g = np.full((m, m), np.nan)
    for a, (lo, hi) in enumerate(ranges):
        if not lo <= a < hi:
            g[a, a] = float(torch.linalg.matrix_norm(ops[a].T @ ops[a])) ** 2
        if hi > lo:
            p = z[:, offs[lo]:offs[hi]].T @ ops[a]  # every M_bᵀMₐ of the range in one product
            for j in range(lo, hi):
                g[a, j] = g[j, a] = float(torch.linalg.matrix_norm(p[offs[j] - offs[lo]:offs[j + 1] - offs[lo]])) ** 2
    return g


def _fill(g: np.ndarray, ok: list[bool], rows: range, cols: range, symmetric: bool) -> np.ndarray:
    out = np.full((len(rows), len(cols)), np.nan)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            if ok[a] and ok[b]:
                out[i, j] = 1.0 if symmetric and a == b else clip01(g[a, b] / np.sqrt(g[a, a] * g[b, b]))
    return out


def cka_matrix(xs: Sequence[Matrix], ys: Sequence[Matrix] | None = None) -> np.ndarray:
    """Linear CKA between every representation in ``xs`` and every one in ``ys``.

    Each matrix is centred once; the map then costs one Gram or feature product per matrix and
    pair, in whichever form is cheaper for the whole map (see the module docstring). Equal to
    :func:`~layerprobe.metrics.linear_cka` pairwise (to ~1e-12).

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
    ys_l = [] if ys is None else list(ys)
    if not xs_l or (not symmetric and not ys_l):
        raise LayerProbeError(f"cka_matrix needs non-empty lists, got {len(xs_l)=}, {len(ys_l)=}")
    n = _check_list_shapes({"xs": xs_l} if symmetric else {"xs": xs_l, "ys": ys_l})
    lx, m = len(xs_l), len(xs_l) + len(ys_l)
    names = [f"xs[{i}]" for i in range(lx)] + [f"ys[{j}]" for j in range(len(ys_l))]
    reasons: list[str] = []
    z, offs, ok = _centred_block(xs_l + ys_l, names, n, reasons)
    if symmetric:
        g = _inner(z, offs, [(a, m) for a in range(m)])
        result = _fill(g, ok, range(m), range(m), True)
    else:
        g = _inner(z, offs, [(lx, m)] * lx + [(b, b) for b in range(lx, m)])
        result = _fill(g, ok, range(lx), range(lx, m), False)
    if reasons:
        undefined("; ".join(reasons))
    return result


def cka_maps(xs: Sequence[Matrix], ys: Sequence[Matrix]) -> dict[str, np.ndarray]:
    """The three cross-layer linear CKA maps of two models, sharing all per-entry work.

    Each representation is converted and centred **once** and every inner product ‖MₐᵀM_b‖²
    computed once; the three maps are read off one table. Equal to ``cka_matrix(xs, ys)``,
    ``cka_matrix(xs)`` and ``cka_matrix(ys)``.

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
    lx, m = len(xs_l), len(xs_l) + len(ys_l)
    names = [f"xs[{i}]" for i in range(lx)] + [f"ys[{j}]" for j in range(len(ys_l))]
    reasons: list[str] = []
    z, offs, ok = _centred_block(xs_l + ys_l, names, n, reasons)
    g = _inner(z, offs, [(a, m) for a in range(m)])
    out = {"xy": _fill(g, ok, range(lx), range(lx, m), False),
           "xx": _fill(g, ok, range(lx), range(lx), True),
           "yy": _fill(g, ok, range(lx, m), range(lx, m), True)}
    if reasons:
        undefined("; ".join(reasons))
    return out
