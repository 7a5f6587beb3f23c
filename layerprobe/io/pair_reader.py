"""Read tensor pairs from two checkpoints ahead of their use, into one reused buffer.

A weights comparison reads two checkpoints one tensor pair at a time and sums each pair
(:class:`~layerprobe.metrics.drift.DriftAccumulator`). :class:`PairReader` does the reading on a
background thread, so that reading the next pair overlaps summing this one, and reads every
tensor into a ring buffer that is reused from pair to pair, so that a stream of tensors costs no
fresh allocation (and no page faults) per tensor.

Memory: the ring holds 2.5 × the largest tensor, so reading ahead never takes more than that
(a pair in use plus what fits beside it). Values do not depend on it: every tensor is the
file's bytes, and the pairs come out in the order they were asked for.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Generator, Sequence

import torch

from layerprobe.io.checkpoints import TensorSource

__all__ = ["PREFETCH", "PairReader"]

#: Read ahead on a background thread (the output is the same either way).
PREFETCH = True

_ALIGN = 64
#: Ring size as a multiple of the largest tensor: a pair in use (≤ 2×) plus room to read ahead.
_RING = 2.5

Getter = Callable[..., torch.Tensor]


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _file_source(get: Getter) -> TensorSource | None:
    """The source behind ``get`` when it reads from a file into a given buffer, else None."""
    src = getattr(get, "__self__", None)
    return src if isinstance(src, TensorSource) and src.fills_out else None


class _Ring:
    """First-in first-out regions of one byte buffer (a region is freed before any later one)."""

    def __init__(self, arena: torch.Tensor) -> None:
        self.arena = arena
        self.cap = arena.numel()
        self.live: collections.deque[tuple[int, int]] = collections.deque()
        self.cond = threading.Condition()
        self.stop = False

    def _fit(self, size: int) -> int | None:
        if not self.live:
            return 0
        tail, head = self.live[0][0], self.live[-1][1]
        if head > tail:  # regions in [tail, head): after head, else wrap to the front
            if head + size <= self.cap:
                return head
            return 0 if size <= tail else None
        return head if head + size <= tail else None  # wrapped: regions in [tail, cap) ∪ [0, head)

    def alloc(self, size: int) -> int | None:
        """Start of a free region of ``size`` bytes (waits for one); None once stopped."""
        with self.cond:
            while not self.stop:
                pos = self._fit(size)
                if pos is not None:
                    self.live.append((pos, pos + size))
                    return pos
                self.cond.wait()
            return None

    def free_oldest(self) -> None:
        with self.cond:
            self.live.popleft()
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()


class PairReader:
    """Yields tensor pairs read ahead into a reused ring buffer (see the module docstring).

    One reader can serve several calls of :meth:`pairs` in turn (e.g. one per block of a
    comparison): the buffer is kept and grown when a later call has a larger tensor.

    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from layerprobe.io.checkpoints import open_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> save_file({"w": torch.ones(3), "v": torch.zeros(2)}, os.path.join(d, "a.safetensors"))
    >>> save_file({"w": torch.ones(3) * 2, "v": torch.ones(2)}, os.path.join(d, "b.safetensors"))
    >>> with open_checkpoint(os.path.join(d, "a.safetensors")) as a, \\
    ...         open_checkpoint(os.path.join(d, "b.safetensors")) as b:
    ...     [(float(x.sum()), float(y.sum())) for x, y in PairReader().pairs(a.get, b.get, [("w", "w"), ("v", "v")])]
    [(3.0, 6.0), (0.0, 2.0)]
    """

    def __init__(self, prefetch: bool | None = None) -> None:
        self.prefetch = PREFETCH if prefetch is None else bool(prefetch)
        self._arena: torch.Tensor | None = None

    def pairs(self, get_a: Getter, get_b: Getter,
              keys: Sequence[tuple[str, str]]) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        """``(get_a(ka), get_b(kb))`` for each ``(ka, kb)`` of ``keys``, in order.

        A yielded pair is valid until the next one is asked for (its bytes are then reused):
        use it, or copy it, before moving on. Getters of file sources
        (:attr:`~layerprobe.io.checkpoints.TensorSource.fills_out`) read into the ring; other
        getters (tensors already in memory) are called as they are. Every name must exist
        (sizes are looked up first); read errors are raised at the pair they belong to, as if
        the pairs were read one after the other.
        """
        src_a, src_b = _file_source(get_a), _file_source(get_b)
        sizes = [(_align(src_a.nbytes(ka)) if src_a else 0, _align(src_b.nbytes(kb)) if src_b else 0)
                 for ka, kb in keys]
        largest = max((max(s) for s in sizes), default=0)
        if not largest:  # nothing to read from a file
            for ka, kb in keys:
                yield get_a(ka), get_b(kb)
            return
        need = max(int(_RING * largest), max(sa + sb for sa, sb in sizes))
        if self._arena is None or self._arena.numel() < need:
            self._arena = None  # free the old buffer first
            self._arena = torch.empty(_align(need), dtype=torch.uint8)
        ring = _Ring(self._arena)
        if not self.prefetch:
            for (ka, kb), (sa, sb) in zip(keys, sizes):
                yield _read(ring, get_a, get_b, ka, kb, sa, sb)[:2]
                ring.free_oldest()
            return
        out: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                for (ka, kb), (sa, sb) in zip(keys, sizes):
                    item = _read(ring, get_a, get_b, ka, kb, sa, sb)
                    if item is None:  # stopped
                        return
                    out.put(item)
            except BaseException as exc:  # raised to the caller at this pair
                out.put(exc)

        thread = threading.Thread(target=work, name="layerprobe-read", daemon=True)
        thread.start()
        try:
            for _ in keys:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item[0], item[1]
                ring.free_oldest()
        finally:
            ring.close()
            thread.join()


def _read(ring: _Ring, get_a: Getter, get_b: Getter, ka: str, kb: str, sa: int, sb: int):
    """Read one pair into one region of the ring: ``(t0, t1)``; None if the ring was stopped."""
    pos = ring.alloc(max(sa + sb, _ALIGN))  # never empty: a region always has an end past its start
    if pos is None:
        return None
    arena = ring.arena
    t0 = get_a(ka, out=arena[pos:pos + sa]) if sa else get_a(ka)
    t1 = get_b(kb, out=arena[pos + sa:pos + sa + sb]) if sb else get_b(kb)
    return t0, t1
