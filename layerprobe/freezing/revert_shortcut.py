"""The revert test's shortcut: serve a reverted prefix's blocks from the whole-stack pass.

With the embeddings and the bottom ``k`` blocks put back to the base weights, block ``i < k`` of the
reverted model computes exactly what block ``i`` computes when the *whole* stack is reverted (the same
weights on the same inputs, in eval mode). The revert test runs that whole-stack pass anyway (its
``k = n`` row), so :class:`StackOutputs` keeps every block's output of it per batch and, for each
``1 <= k < n``, hands them up in place of blocks ``0..k-1``: only the blocks above the prefix and the head
run. The test's passes fall from ``n + 2`` whole ones to ``3`` whole ones plus ``(n - 1) / 2`` stacks
(for 6 blocks: 8 to 5.5; for 12 blocks: 14 to 8.5).

It stands in only where that is exact. Captured on the whole-stack pass (forward hooks on the block
modules): every block called once per pass, returning a tensor or a tuple of tensors / ``None``; served
by patching the prefix blocks' ``forward`` (instance attributes, restored in ``finally``; hooks others
registered on the blocks still fire). :class:`RevertShortcut` holds whether it has been checked: its first
use also computes one reverted prefix the long way on one batch and compares the outputs; a difference
(a block that reads something the capture cannot hold), a capture that breaks the conditions above or
one beyond ``max_bytes`` turns it off with the reason in :attr:`RevertShortcut.off`, and the test is
computed the long way — the same rows, only slower.

Nothing is kept between revert tests: the outputs are captured on each test's own whole-stack pass, so
a parameter outside the prefix that the prefix blocks read (e.g. DeBERTa's relative position embeddings)
has the same value in the capture and in the served passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from layerprobe.model.forwards import restore_forward, set_forward

__all__ = ["DEFAULT_SHORTCUT_BYTES", "RevertShortcut", "StackOutputs"]

#: the most bytes of block outputs one revert test keeps for the shortcut (beyond it: the long way)
DEFAULT_SHORTCUT_BYTES = 1 << 30


class RevertShortcut:
    """Whether a model's revert tests may use :class:`StackOutputs` (one per model and probe, e.g. a tracker's).

    ``checked`` turns True once a served pass has matched the long way; ``off`` is why it may not
    (None while it may). ``max_bytes`` bounds the outputs one test keeps.
    """

    def __init__(self, max_bytes: int = DEFAULT_SHORTCUT_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.checked = False
        self.off: str | None = None

    def turn_off(self, why: str) -> None:
        self.off = why


def _copied(out: Any) -> Any:
    if torch.is_tensor(out):
        return out.detach().clone()
    return tuple(None if x is None else x.detach().clone() for x in out)


def _nbytes(out: Any) -> int:
    items = (out,) if torch.is_tensor(out) else out
    return sum(x.numel() * x.element_size() for x in items if x is not None)


class StackOutputs:
    """Every block's output of the whole-stack reverted pass, per batch, served in place of a reverted prefix.

    Args:
        modules: the block modules bottom-up, one per block (:func:`~layerprobe.model.blocks.block_modules`).
        shortcut: the model's :class:`RevertShortcut` (its ``max_bytes``; a failed capture turns it off).
    """

    def __init__(self, modules: list[nn.Module], shortcut: RevertShortcut) -> None:
        self.modules = modules
        self.shortcut = shortcut
        self.batches: list[list[Any]] = []
        self._bytes = 0

    @property
    def usable(self) -> bool:
        return self.shortcut.off is None and bool(self.batches)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Around one batch of the whole-stack pass (batches in order): keep each block's output of it."""
        calls: list[int] = [0] * len(self.modules)
        current: list[Any] = [None] * len(self.modules)

        def hook(i: int):
            def keep(module: nn.Module, args: Any, out: Any) -> None:
                calls[i] += 1
                ok = torch.is_tensor(out) or (isinstance(out, tuple) and bool(out) and torch.is_tensor(out[0]) and
                                              all(x is None or torch.is_tensor(x) for x in out))
                if not ok:
                    self.shortcut.turn_off(f"block {i} returns a {type(out).__name__}, not tensors")
                elif self.shortcut.off is None:
                    current[i] = _copied(out)
            return keep

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self.modules)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        self._keep_batch(calls, current)  # not reached when the pass raised

    def _keep_batch(self, calls: list[int], current: list[Any]) -> None:
        odd = [(i, c) for i, c in enumerate(calls) if c != 1]
        if odd and self.shortcut.off is None:
            i, c = odd[0]
            self.shortcut.turn_off(f"block {i} is applied {c} times in one forward pass")
        if self.shortcut.off is None:
            size = sum(_nbytes(o) for o in current)
            if self._bytes + size > self.shortcut.max_bytes:
                self.shortcut.turn_off(f"the block outputs of the probe would take more than "
                                       f"{self.shortcut.max_bytes / 2**20:.0f} MiB")
            else:
                self._bytes += size
                self.batches.append(current)
                return
        self.batches, self._bytes = [], 0

    @contextmanager
    def serving(self, k: int, batch: int) -> Iterator[None]:
        """Blocks ``0..k-1`` return their captured outputs of batch number ``batch`` instead of running."""
        outs = self.batches[batch]
        patched: list[tuple[nn.Module, Any]] = []
        try:
            for i in range(k):  # a prefix cache's or accelerate's forward, there before ours, comes back after
                mod = self.modules[i]
                patched.append((mod, set_forward(mod, (lambda o: lambda *a, **kw: _copied(o))(outs[i]))))
            yield
        finally:
            for mod, previous in reversed(patched):
                restore_forward(mod, previous)
