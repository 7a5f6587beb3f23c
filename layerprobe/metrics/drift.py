"""Weight drift: how far parameters moved between two checkpoints, and in which parameter groups.

Directions are fixed: ``weight_drift`` and ``max_abs_change`` are **distances** (0 = unchanged);
``cosine`` is a **similarity** (1 = unchanged). Everything is accumulated in float64 whatever the
input dtypes (fp16/bf16/fp32, mixed between the two checkpoints), tensor by tensor and in chunks,
so huge checkpoints can be streamed without holding float64 copies of them.

There is one code path: :class:`DriftAccumulator` keeps five scalars, and :func:`weight_drift`,
:func:`weight_cosine`, :func:`max_abs_change` and :func:`block_anatomy` are built on it.
Parameter groups live in :mod:`~layerprobe.metrics.param_groups` and update ranks in
:mod:`~layerprobe.metrics.updates`; their public names are re-exported here.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics._weights import _as_tensor, _pairs
from layerprobe.metrics.core import Weight, Weights
from layerprobe.metrics.param_groups import GROUPS, param_group
from layerprobe.metrics.updates import _f64_delta, matrix_updates, param_update_rank, update_rank

__all__ = [
    "GROUPS",
    "DriftAccumulator",
    "block_anatomy",
    "matrix_updates",
    "max_abs_change",
    "pair_sums",
    "param_group",
    "param_update_rank",
    "update_rank",
    "weight_cosine",
    "weight_drift",
]

#: Direction of each metric: "distance" (0 = unchanged) or "similarity" (1 = unchanged).
DIRECTION = {"weight_drift": "distance", "max_abs_change": "distance", "cosine": "similarity"}

#: Elements converted to float64 at a time (two rows of 2 MiB: the chunk stays in cache).
CHUNK = 1 << 18

#: Chunks handed to a worker at a time.
_CHUNKS_PER_TASK = 16

#: Worker threads for big tensors (default: every core, at most 8). The output does not depend
#: on it: chunks are fixed by :data:`CHUNK`, each is summed the same way, merged in chunk order.
THREADS = max(1, min(8, os.cpu_count() or 1))

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _buffer(chunk: int) -> torch.Tensor:
    """This thread's reused (2, chunk) float64 buffer: rows W0 and ΔW of one chunk."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[1] < chunk:
        buf = _local.buf = torch.empty(2, chunk, dtype=torch.float64)
    return buf


def _chunk_sums(fa: torch.Tensor, fb: torch.Tensor, starts: range, chunk: int) -> list[tuple[float, float, float, float]]:
    """Per chunk: ⟨a,a⟩, ⟨a,Δ⟩, ⟨Δ,Δ⟩ (Δ = b − a in float64) and max|Δ|, the chunk held in cache.

    ‖b‖² and ⟨a,b⟩ follow exactly as ‖a‖² + 2⟨a,Δ⟩ + ‖Δ‖² and ‖a‖² + ⟨a,Δ⟩ (no cancellation:
    the small quantity, Δ, is formed directly). Three dot products and max/min of Δ read the
    cached rows without writing (a 2×2 ``mm`` and ``abs().max()`` cost a third more).
    """
    buf = _buffer(chunk)
    out = []
    for s in starts:
        e = min(fa.numel(), s + chunk)
        k = e - s
        a, d = buf[0, :k], buf[1, :k]
        a.copy_(fa[s:e])
        d.copy_(fb[s:e])
        d.sub_(a)
        hi, lo = float(d.amax()), float(d.amin())  # both NaN if Δ has a NaN
        out.append((float(torch.dot(a, a)), float(torch.dot(a, d)), float(torch.dot(d, d)),
                    hi if hi != hi or hi >= -lo else -lo))
    return out


def _get_pool(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=True)
            # each worker sums single-threaded (OpenMP/MKL thread counts are per thread): a dot
            # product split over BLAS threads would add in an order that depends on the machine
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="layerprobe-drift",
                                       initializer=torch.set_num_threads, initargs=(1,))
            _pool_size = threads
        return _pool


class _OneTorchThread:
    """Run torch ops single-threaded (restored on exit), so that no reduction is split in a way
    that depends on the thread count: parallelism comes from our own workers instead."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        if self.saved != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.saved != 1:
            torch.set_num_threads(self.saved)


def pair_sums(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK, threads: int | None = None) -> tuple:
    """``(Σa², Σb², Σab, Σ(b−a)², max|b−a|)`` of two same-shape tensors, accumulated in float64.

    One pass per chunk through a reused float64 buffer; big tensors are split over ``threads``
    workers. The result is identical for any thread count: the chunks are fixed by ``chunk``, each
    is summed single-threaded, and the per-chunk sums are added in chunk order. NaN/Inf in ``a``
    (``b``) make Σa² (Σb²) non-finite, so finiteness needs no separate pass.

    >>> import torch
    >>> pair_sums(torch.tensor([3.0, 0.0]), torch.tensor([3.0, 4.0]))
    (9.0, 25.0, 9.0, 16.0, 4.0)
    """
    fa, fb = a.reshape(-1), b.reshape(-1)
    if fa.device.type != "cpu":
        fa, fb = fa.cpu(), fb.cpu()
    n = fa.numel()
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    threads = THREADS if threads is None else max(1, int(threads))
    starts = range(0, n, chunk)
    with _OneTorchThread():
        if threads == 1 or len(starts) <= _CHUNKS_PER_TASK:
            parts = _chunk_sums(fa, fb, starts, chunk)
        else:
            step = _CHUNKS_PER_TASK
            pool = _get_pool(threads)
            futures = [pool.submit(_chunk_sums, fa, fb, starts[i:i + step], chunk)
                       for i in range(0, len(starts), step)]
            parts = [p for f in futures for p in f.result()]
    aa = ad = dd = 0.0
    mx = 0.0
    for paa, pad, pdd, pm in parts:  # fixed order: byte-identical whatever the thread count
        aa += paa
        ad += pad
        dd += pdd
        if math.isnan(pm) or pm > mx:
            mx = pm if not math.isnan(mx) else mx
    bb, ab = aa + 2.0 * ad + dd, aa + ad
    if bb < _SMALL_B * aa:  # b tiny next to a (b ≈ 0): Σb² and Σab derived from a's sums cancel
        with _OneTorchThread():
            bb, ab = _direct_b_sums(fa, fb, chunk)
    return aa, bb, ab, dd, mx


#: below this ‖b‖²/‖a‖², Σb² and Σab are summed directly (their derivation from Σa², Σa·Δ, ΣΔ² keeps
#: only about ‖a‖²·1e-16 of absolute precision); rare, so the usual pass stays three dot products
_SMALL_B = 1e-6


def _direct_b_sums(fa: torch.Tensor, fb: torch.Tensor, chunk: int) -> tuple[float, float]:
    """``(Σb², Σab)`` in float64, chunk by chunk in a fixed order (deterministic)."""
    buf = _buffer(chunk)
    bb = ab = 0.0
    for s in range(0, fa.numel(), chunk):
        e = min(fa.numel(), s + chunk)
        a, b = buf[0, :e - s], buf[1, :e - s]
        a.copy_(fa[s:e])
        b.copy_(fb[s:e])
        bb += float(torch.dot(b, b))
        ab += float(torch.dot(a, b))
    return bb, ab


class DriftAccumulator:
    """Streams tensor pairs and keeps only scalars: Σ‖Δ‖², Σ‖w0‖², Σ‖w1‖², Σ⟨w0,w1⟩, max|Δ|, n.

    Each tensor pair goes through :func:`pair_sums`: one pass per chunk of ``chunk`` elements
    through a reused float64 buffer (no float64 copy of a tensor, no fresh buffer per chunk),
    split over ``threads`` workers for big tensors with a result that does not depend on them.

    ``result()`` conventions: ``weight_drift`` = ‖W1−W0‖/‖W0‖ over everything added; if
    ‖W0‖ = 0 it is ``inf`` when anything changed and ``0.0`` otherwise. ``cosine`` is 1.0 when
    both are all-zero (nothing changed), ``nan`` when exactly one is all-zero. With nothing added,
    drift 0.0, cosine 1.0, max_abs_change 0.0, n_params 0. NaN in the weights propagates.

    >>> import torch
    >>> acc = DriftAccumulator()
    >>> acc.add("a", torch.tensor([3.0, 0.0]), torch.tensor([3.0, 4.0]))
    (True, True)
    >>> acc.add("b", torch.tensor([4.0]), torch.tensor([4.0]))
    (True, True)
    >>> r = acc.result()
    >>> r["weight_drift"], r["max_abs_change"], r["n_params"]
    (0.8, 4.0, 3)
    """

    def __init__(self, chunk: int = CHUNK, threads: int | None = None) -> None:
        if chunk < 1:
            raise LayerProbeError(f"chunk must be ≥ 1, got {chunk=}")
        self.chunk = int(chunk)
        self.threads = threads
        self.sq_delta = 0.0
        self.sq_w0 = 0.0
        self.sq_w1 = 0.0
        self.dot = 0.0
        self.max_abs = 0.0
        self.n_params = 0
        self.n_tensors = 0

    def add(self, name: str, t0: Weight, t1: Weight) -> tuple[bool, bool]:
        """Add one parameter; return whether each side was finite (no NaN/Inf).

        Args:
            name: parameter name (used in error messages).
            t0: the parameter before, any shape, any numeric dtype/device.
            t1: the parameter after, the same shape (dtype may differ).

        Raises:
            LayerProbeError: if the shapes differ.
        """
        a, b = _as_tensor(t0, name), _as_tensor(t1, name)
        if tuple(a.shape) != tuple(b.shape):
            raise LayerProbeError(
                f"parameter {name!r}: shape mismatch, before {tuple(a.shape)} vs after {tuple(b.shape)}"
            )
        s0, s1, dt, sd, mx = pair_sums(a, b, self.chunk, self.threads)
        self.sq_w0 += s0
        self.sq_w1 += s1
        self.dot += dt
        self.sq_delta += sd
        if math.isnan(mx) or mx > self.max_abs:  # stays nan once nan
            self.max_abs = mx if not math.isnan(self.max_abs) else self.max_abs
        self.n_params += int(a.numel())
        self.n_tensors += 1
        ok0 = math.isfinite(s0)
        # Σb² is derived from a's sums too: only when a is non-finite must b be checked apart
        ok1 = math.isfinite(s1) if ok0 else not (b.is_floating_point() and not bool(torch.isfinite(b).all()))
        return ok0, ok1

    def merge(self, other: DriftAccumulator) -> DriftAccumulator:
        """Fold another accumulator's sums into this one (e.g. parameter groups into a block).

        >>> a, b = DriftAccumulator(), DriftAccumulator()
        >>> _ = a.add("a", torch.tensor([3.0, 0.0]), torch.tensor([3.0, 4.0]))
        >>> _ = b.add("b", torch.tensor([4.0]), torch.tensor([4.0]))
        >>> a.merge(b).result()["weight_drift"]
        0.8
        """
        self.sq_delta += other.sq_delta
        self.sq_w0 += other.sq_w0
        self.sq_w1 += other.sq_w1
        self.dot += other.dot
        if math.isnan(other.max_abs) or other.max_abs > self.max_abs:
            self.max_abs = other.max_abs
        self.n_params += other.n_params
        self.n_tensors += other.n_tensors
        return self

    def result(self) -> dict:
        """Return ``{"weight_drift", "cosine", "max_abs_change", "n_params"}``."""
        if self.sq_w0 > 0.0:
            drift = math.sqrt(self.sq_delta / self.sq_w0)
        elif math.isnan(self.sq_w0) or math.isnan(self.sq_delta):
            drift = float("nan")
        else:
            drift = math.inf if self.sq_delta > 0.0 else 0.0
        if self.sq_w0 > 0.0 and self.sq_w1 > 0.0:
            cosine = max(-1.0, min(1.0, self.dot / math.sqrt(self.sq_w0 * self.sq_w1)))
        elif self.sq_w0 == 0.0 and self.sq_w1 == 0.0:
            cosine = 1.0
        else:
            cosine = float("nan")
        return {
            "weight_drift": drift,
            "cosine": cosine,
            "max_abs_change": self.max_abs,
            "n_params": self.n_params,
        }


def _accumulate(w0: Weights, w1: Weights) -> DriftAccumulator:
    acc = DriftAccumulator()
    for name, a, b in _pairs(w0, w1):
        acc.add(name, a, b)
    return acc


def weight_drift(w0: Weights, w1: Weights) -> float:
    """Relative Frobenius drift ‖W1 − W0‖ / ‖W0‖ (a distance; 0 = unchanged).

    Args:
        w0: weights before: a tensor/array, a mapping name → tensor, or a sequence of tensors;
            for several tensors the norm is over all of them concatenated.
        w1: weights after, the same structure (same keys and shapes; dtypes may differ).

    Returns:
        The drift, accumulated in float64; ``inf`` if ‖W0‖ = 0 and W1 ≠ W0, ``0.0`` if both
        are zero.

    Raises:
        LayerProbeError: differing keys (names the missing/extra ones) or shapes (names the
            parameter and both shapes).

    >>> import torch
    >>> weight_drift({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 5.0])})
    0.2
    """
    return _accumulate(w0, w1).result()["weight_drift"]


def weight_cosine(w0: Weights, w1: Weights) -> float:
    """Cosine similarity of the flattened, concatenated weights (1 = same direction).

    Args:
        w0: weights before (tensor, mapping or sequence, as in :func:`weight_drift`).
        w1: weights after, the same structure.

    Returns:
        The cosine in [−1, 1]; 1.0 if both are all-zero, nan if exactly one is.

    >>> import numpy as np
    >>> weight_cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0]))
    0.0
    """
    return _accumulate(w0, w1).result()["cosine"]


def max_abs_change(w0: Weights, w1: Weights) -> float:
    """Largest absolute elementwise change max|W1 − W0| (a distance).

    Args:
        w0: weights before (tensor, mapping or sequence, as in :func:`weight_drift`).
        w1: weights after, the same structure.

    >>> import numpy as np
    >>> max_abs_change([np.array([1.0, 2.0])], [np.array([1.5, -1.0])])
    3.0
    """
    return _accumulate(w0, w1).result()["max_abs_change"]


def block_anatomy(w0: Mapping, w1: Mapping, with_rank: bool = True) -> dict[str, dict]:
    """Drift of one block broken down by parameter group (see :func:`param_group`).

    For every group present, in :data:`GROUPS` order: ``weight_drift``, ``cosine``,
    ``max_abs_change``, ``n_params``, ``n_tensors``. With ``with_rank`` and when the group has a
    parameter with ≥ 2 dims, also ``stable_rank`` and ``rank90`` **of the largest matrix of the
    group** (most elements; the first one on ties), named in ``rank_param``.

    Args:
        w0: name → tensor before (names relative to the block or full names).
        w1: name → tensor after (same names and shapes).
        with_rank: compute the SVD-based rank of the update (costs one float64 SVD per group).

    Raises:
        LayerProbeError: differing names or shapes.

    >>> import torch
    >>> w0 = {"attention.self.query.weight": torch.ones(2, 2), "output.LayerNorm.weight": torch.ones(2)}
    >>> w1 = {"attention.self.query.weight": torch.ones(2, 2) * 1.5, "output.LayerNorm.weight": torch.ones(2)}
    >>> a = block_anatomy(w0, w1)
    >>> list(a), a["attn.q"]["weight_drift"], a["attn.q"]["rank90"], a["norm"]["weight_drift"]
    (['attn.q', 'norm'], 0.5, 1, 0.0)
    """
    accs: dict[str, DriftAccumulator] = {}
    largest: dict[str, tuple[int, str, Weight, Weight]] = {}
    for name, a, b in _pairs(w0, w1):
        group = param_group(name)
        acc = accs.setdefault(group, DriftAccumulator())
        acc.add(name, a, b)
        ta = _as_tensor(a, name)
        if with_rank and ta.ndim >= 2 and (group not in largest or ta.numel() > largest[group][0]):
            largest[group] = (ta.numel(), name, a, b)
    out: dict[str, dict] = {}
    for group in GROUPS:
        if group not in accs:
            continue
        acc = accs[group]
        row = {**acc.result(), "n_tensors": acc.n_tensors}
        if group in largest:
            _, name, a, b = largest[group]
            r = param_update_rank(name, _f64_delta(a, b, name))
            assert r is not None  # None only for < 2 dims; largest holds tensors with ≥ 2
            row.update(stable_rank=r["stable_rank"], rank90=r["rank90"], rank_param=name)
        out[group] = row
    return out
