"""Exact linear CKA from row chunks: shifted float64 sums, O(d²) memory.

:class:`StreamingCKA` takes batches of rows as they come (e.g. one per forward pass) and gives
the same value as :func:`~layerprobe.metrics.linear.linear_cka` on all rows stacked. The feature
form of :func:`~layerprobe.metrics.linear.linear_cka` runs on the same accumulator, fed one chunk
of rows at a time, so the input is never copied whole to float64.

Numerics: every row is shifted by a fixed per-column value ``s`` (close to the column mean)
before its products are accumulated in float64, and the centred co-moments are recovered
exactly as ``C = Σ(x−s)(y−t)ᵀ − n·m̃ₓm̃ᵧᵀ`` with m̃ the mean of the shifted rows. Because ``s``
is close to the mean, m̃ is small and nothing cancels even when the features' mean is huge
relative to their spread (the case that breaks uncentred sums).
"""

from __future__ import annotations

import math

import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.core import (
    Matrix,
    as_cpu,
    check_pair,
    clip01,
    column_range,
    constant_columns,
    fro,
    undefined,
)

__all__ = ["StreamingCKA"]

#: float64 elements converted per chunk (4 MiB per side): big enough that the chunked products
#: run at the speed of one large product, small enough not to matter for memory.
CHUNK_ELEMS = 1 << 19


class _Moments:
    """Shifted sums of paired rows: n, Σx̃, Σỹ, X̃ᵀX̃, ỸᵀỸ, X̃ᵀỸ (x̃ = x − sx) and column ranges."""

    def __init__(self, sx: torch.Tensor, sy: torch.Tensor) -> None:
        d1, d2 = sx.shape[0], sy.shape[0]
        f64 = torch.float64
        self.sx, self.sy = sx.to(f64), sy.to(f64)
        self.n = 0
        self.s1x, self.s1y = torch.zeros(d1, dtype=f64), torch.zeros(d2, dtype=f64)
        self.sxx = torch.zeros(d1, d1, dtype=f64)
        self.syy = torch.zeros(d2, d2, dtype=f64)
        self.sxy = torch.zeros(d1, d2, dtype=f64)
        # column ranges of the rows seen: all four are set by the first non-empty add (so when n > 0)
        self.lo_x: torch.Tensor | None = None
        self.hi_x: torch.Tensor | None = None
        self.lo_y: torch.Tensor | None = None
        self.hi_y: torch.Tensor | None = None

    @property
    def dims(self) -> tuple[int, int]:
        return self.sx.shape[0], self.sy.shape[0]

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows (CPU tensors of any float dtype), converting a chunk at a time."""
        n = x.shape[0]
        if n == 0:
            return
        d1, d2 = self.dims
        rows = max(1, min(n, CHUNK_ELEMS // max(d1, d2, 1)))
        bx = torch.empty(rows, d1, dtype=torch.float64)
        by = torch.empty(rows, d2, dtype=torch.float64)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            cx, cy = bx[: e - s].copy_(x[s:e]), by[: e - s].copy_(y[s:e])
            cx.sub_(self.sx)
            cy.sub_(self.sy)
            self.s1x += cx.sum(dim=0)
            self.s1y += cy.sum(dim=0)
            self.sxx.addmm_(cx.T, cx)
            self.syy.addmm_(cy.T, cy)
            self.sxy.addmm_(cx.T, cy)
        self.n += n
        self._range(x, y)

    def _ranges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lo_x, hi_x, lo_y, hi_y)``; only once rows were added (n > 0), which sets all four."""
        lo_x, hi_x, lo_y, hi_y = self.lo_x, self.hi_x, self.lo_y, self.hi_y
        assert lo_x is not None and hi_x is not None and lo_y is not None and hi_y is not None, "no rows added"
        return lo_x, hi_x, lo_y, hi_y

    def _range(self, x: torch.Tensor, y: torch.Tensor) -> None:
        (lx, hx), (ly, hy) = column_range(x), column_range(y)
        self._fold(*(t.to(torch.float64) for t in (lx, hx, ly, hy)))

    def _fold(self, lx: torch.Tensor, hx: torch.Tensor, ly: torch.Tensor, hy: torch.Tensor) -> None:
        """Widen the column ranges to cover ``[lx, hx]`` and ``[ly, hy]`` (set them on the first rows)."""
        if self.lo_x is None:
            self.lo_x, self.hi_x, self.lo_y, self.hi_y = lx, hx, ly, hy
        else:
            lo_x, hi_x, lo_y, hi_y = self._ranges()
            self.lo_x, self.hi_x = torch.minimum(lo_x, lx), torch.maximum(hi_x, hx)
            self.lo_y, self.hi_y = torch.minimum(lo_y, ly), torch.maximum(hi_y, hy)

    def merge(self, o: _Moments) -> None:
        """Fold in another accumulator's rows, moving its sums to this one's shift."""
        if o.n == 0:
            return
        dx, dy = o.sx - self.sx, o.sy - self.sy  # x − s_self = (x − s_o) + dx
        self.sxx += o.sxx + torch.outer(o.s1x, dx) + torch.outer(dx, o.s1x) + o.n * torch.outer(dx, dx)
        self.syy += o.syy + torch.outer(o.s1y, dy) + torch.outer(dy, o.s1y) + o.n * torch.outer(dy, dy)
        self.sxy += o.sxy + torch.outer(o.s1x, dy) + torch.outer(dx, o.s1y) + o.n * torch.outer(dx, dy)
        self.s1x += o.s1x + o.n * dx
        self.s1y += o.s1y + o.n * dy
        self.n += o.n
        self._fold(*o._ranges())  # o.n > 0

    def cka(self, names: tuple[str, str] = ("x", "y")) -> float:
        """Linear CKA ``‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F)`` of the rows seen (nan + warning if undefined)."""
        if self.n < 2:
            raise LayerProbeError(f"linear CKA needs at least 2 rows, got n={self.n}")
        bad = [nm for nm, s1, s2 in ((names[0], self.s1x, self.sxx), (names[1], self.s1y, self.syy))
               if not (bool(torch.isfinite(s1).all()) and bool(torch.isfinite(torch.diagonal(s2)).all()))]
        if bad:
            return undefined(" and ".join(bad) + " contains NaN or Inf", stacklevel=4)
        mx, my = self.s1x / self.n, self.s1y / self.n
        cxx = self.sxx - self.n * torch.outer(mx, mx)
        cyy = self.syy - self.n * torch.outer(my, my)
        cxy = self.sxy - self.n * torch.outer(mx, my)
        lo_x, hi_x, lo_y, hi_y = self._ranges()  # n >= 2
        cx, cy = constant_columns(lo_x, hi_x), constant_columns(lo_y, hi_y)
        if bool(cx.any()) or bool(cy.any()):
            cxx[cx, :] = 0.0
            cxx[:, cx] = 0.0
            cyy[cy, :] = 0.0
            cyy[:, cy] = 0.0
            cxy[cx, :] = 0.0
            cxy[:, cy] = 0.0
        nxx, nyy = fro(cxx), fro(cyy)
        empty = [nm for nm, v in ((names[0], nxx), (names[1], nyy)) if not v > 0.0]
        if empty:
            return undefined(" and ".join(empty) + " is constant (zero variance after centring)", stacklevel=4)
        return clip01((fro(cxy) / math.sqrt(nxx * nyy)) ** 2)


def shift_of(x: torch.Tensor) -> torch.Tensor:
    """A per-column shift close to the mean, cheaply: the column mean in float32 (float64 input
    keeps float64). Only closeness matters; the shifted sums make the result exact."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.mean(dim=0, dtype=dt).to(torch.float64)


class StreamingCKA:
    """Exact full-data linear CKA accumulated over batches in O(d²) memory.

    Rows are shifted by the first batch's column means and their products summed in float64
    (see the module docstring), so the result equals :func:`~layerprobe.metrics.linear_cka` on
    the concatenated data (to ~1e-12 relative) even when the features' mean is huge compared
    with their spread.

    >>> import numpy as np
    >>> from layerprobe.metrics import linear_cka
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1000, 5)) + 1e4
    >>> y = x @ rng.standard_normal((5, 3))
    >>> s = StreamingCKA()
    >>> for start in range(0, 1000, 100):
    ...     s.update(x[start:start + 100], y[start:start + 100])
    >>> abs(s.compute() - linear_cka(x - 1e4, y)) < 1e-9
    True
    """

    def __init__(self) -> None:
        self._m: _Moments | None = None

    def update(self, x_batch: Matrix, y_batch: Matrix) -> None:
        """Add a batch.

        Args:
            x_batch: shape (b, d1).
            y_batch: shape (b, d2), the same b examples; empty batches are ignored.

        Raises:
            LayerProbeError: bad shapes, or feature dimensions that differ from earlier batches.
        """
        x, y = as_cpu(x_batch, "x_batch"), as_cpu(y_batch, "y_batch")
        check_pair(x, y, 0, "StreamingCKA")
        if self._m is not None and (x.shape[1], y.shape[1]) != self._m.dims:
            raise LayerProbeError(
                f"feature dimensions changed between batches: x_batch.shape={tuple(x.shape)}, "
                f"y_batch.shape={tuple(y.shape)}, earlier (d1, d2)={self._m.dims}"
            )
        if x.shape[0] == 0:
            return
        if self._m is None:
            self._m = _Moments(shift_of(x), shift_of(y))
        self._m.add(x, y)

    def merge(self, other: StreamingCKA) -> StreamingCKA:
        """Fold another accumulator (disjoint rows) into this one; returns ``self``."""
        if other._m is None:
            return self
        if self._m is None:
            self._m = _Moments(other._m.sx, other._m.sy)
        if other._m.dims != self._m.dims:
            raise LayerProbeError(f"cannot merge feature dimensions {other._m.dims} into {self._m.dims}")
        self._m.merge(other._m)
        return self

    @property
    def n(self) -> int:
        """Number of rows seen."""
        return 0 if self._m is None else self._m.n

    def compute(self) -> float:
        """Linear CKA of all rows seen (nan + :class:`CKAUndefinedWarning` if undefined).

        Raises:
            LayerProbeError: if fewer than 2 rows were seen.
        """
        if self._m is None:
            raise LayerProbeError("StreamingCKA.compute() called before any rows were added")
        return self._m.cka()
