"""What freezing a bottom prefix saves per training step, **measured** on the model (not guessed).

A frozen prefix served by a :class:`~layerprobe.freezing.prefix_cache.PrefixCache` saves its forward
pass, its backward pass and the optimizer's update of its parameters. These shares are not
proportional to parameter counts: the embeddings hold a large share of the parameters and cost
almost no forward FLOPs, but their gradient (a dense ``vocab x d`` tensor) and AdamW's update of it
are not free, and a short sequence makes the blocks cheap next to them. The old estimate
(``2/3 x`` the frozen blocks' share of block parameters) printed 11% for the embeddings + 1 block of
MiniLM-L6 where a plain loop measured 27-31% per step.

:func:`calibrate_prefix_savings` therefore **measures** (it does not count FLOPs): on a copy of the
model, at the run's batch shape, with torch on one thread, it times (CPU time of the process,
``time.process_time``) a few training steps — forward, backward, AdamW step — with nothing frozen and
with each bottom prefix (embeddings, embeddings + 1 block, ...) frozen and served by a prefix cache,
and, per prefix, the step that fills the cache (the prefix runs without grad). The result gives the
saving per served step, per filling step, and per epoch for a run of ``E`` epochs whose first epoch
fills the cache: ``1 - (fill + (E - 1) x served) / (E x full)``. It costs ``(n_blocks + 2) x (steps + 2)``
training steps once per model and batch shape; the caller's model is not changed (a deep copy is
timed, so the model's memory is needed twice).

:func:`layerprobe.freezing.rule.recommend` takes the result (``prefix_savings=``) and then reports
the measured saving of the advised prefix instead of the parameter-count estimate.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.apply import bottom_prefix, freeze
from layerprobe.model.blocks import Blocks, find_blocks

__all__ = ["PrefixSavings", "calibrate_prefix_savings"]


@dataclass
class PrefixSavings:
    """Measured CPU seconds of one training step per frozen prefix, and the savings they imply.

    ``prefixes`` are named by their top entry (``"embeddings"``, ``"block.0"``, ...); ``served[p]`` is a
    step with the prefix served from the cache, ``fill[p]`` a step that fills it; ``full`` a step with
    nothing frozen. ``uncached[p]``: why the prefix cache could not serve prefix ``p`` on this model (its
    steps were timed with the prefix frozen, run without grad every step); absent where it served.
    """

    full: float
    served: dict[str, float]
    fill: dict[str, float]
    batch_shape: tuple[int, int]
    steps: int
    threads: int
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    uncached: dict[str, str] = field(default_factory=dict)

    @property
    def prefixes(self) -> list[str]:
        return list(self.served)

    def saving(self, prefix: str) -> float:
        """Share of a full step's CPU time a served step saves with ``prefix`` frozen (0 for "")."""
        return 0.0 if not prefix else 1.0 - self.served[prefix] / self.full

    def fill_saving(self, prefix: str) -> float:
        """Share saved by a step that fills the cache (the prefix runs, without grad)."""
        return 0.0 if not prefix else 1.0 - self.fill[prefix] / self.full

    def epoch_saving(self, prefix: str, epochs: float) -> float:
        """Share of the run's training CPU saved over ``epochs`` epochs, the first filling the cache."""
        if not prefix:
            return 0.0
        e = max(1.0, float(epochs))
        return 1.0 - (self.fill[prefix] + (e - 1.0) * self.served[prefix]) / (e * self.full)

    def entry_shares(self, names: list[str]) -> list[float] | None:
        """Per entry (in ``names``' order, embeddings first), the share of a full step that freezing it
        on top of the entries below saves (served steps): the differences of :meth:`saving` along the
        prefixes. None unless every entry was timed."""
        if any(n not in self.served for n in names):
            return None
        out, below = [], 0.0
        for n in names:
            out.append(self.saving(n) - below)
            below = self.saving(n)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["saving"] = {p: self.saving(p) for p in self.served}
        d["fill_saving"] = {p: self.fill_saving(p) for p in self.served}
        return d


def _loss(out: Any) -> torch.Tensor:
    loss = getattr(out, "loss", None)
    if loss is not None:
        return loss
    logits = getattr(out, "logits", None)
    t = logits if logits is not None else (out[0] if isinstance(out, (tuple, list)) else out)
    return t.float().pow(2).mean()


def _time_steps(model: nn.Module, batch: Mapping[str, torch.Tensor], n: int, cache: Any, fill: bool) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7) if params else None
    out = []
    for _ in range(n):
        if cache is not None and fill:
            cache.clear()
        t0 = time.process_time()
        loss = _loss(model(**batch))
        if loss.requires_grad:
            loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        out.append(time.process_time() - t0)
    return out


def calibrate_prefix_savings(model: nn.Module, batch: Mapping[str, torch.Tensor], blocks: Blocks | None = None,
                             steps: int = 3, threads: int | None = 1, max_blocks: int | None = None) -> PrefixSavings:
    """Measure a training step's CPU time with each bottom prefix frozen and cached (see the module).

    Args:
        model: the model to train (a deep copy is timed; the model itself is left as it is).
        batch: one training batch as the loop passes it (``input_ids``, ``attention_mask``, ``labels``
            ...), at the run's batch size and padded width. Without ``labels`` the loss is the mean
            square of the logits (same backward cost).
        blocks: the model's entries (found if None).
        steps: timed steps per configuration (the median is kept), after one untimed warm-up step.
        threads: torch threads while timing (1: CPU time of one thread, as the freeze study measures;
            None: leave as is).
        max_blocks: largest number of frozen blocks to time (default: every block).
    """
    if steps < 1:
        raise LayerProbeError(f"calibrate_prefix_savings needs steps >= 1, got {steps}")
    from layerprobe.freezing.prefix_cache import PrefixCache, PrefixCacheOffWarning

    blocks = blocks if blocks is not None else find_blocks(model)
    n = len(blocks.blocks) if max_blocks is None else min(int(max_blocks), len(blocks.blocks))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    samples: dict[str, list[float]] = {}
    try:
        uncached: dict[str, str] = {}

        def run(k_emb: bool, k: int) -> tuple[list[float], list[float], str | None]:
            m = copy.deepcopy(model).train()
            mb = blocks  # entries resolve by module path: the copy has the same ones
            for p in m.parameters():
                p.requires_grad_(True)
            if k_emb:
                freeze(m, bottom_prefix(mb, k, embeddings="embeddings" in mb.names), mb)
            with warnings.catch_warnings():  # a cache that turns itself off is said once, in the result
                warnings.simplefilter("ignore", PrefixCacheOffWarning)
                cache = PrefixCache(m, k, blocks=mb) if k >= 1 else None
                try:
                    _time_steps(m, batch, 1, cache, fill=True)  # warm-up (allocator, lazy init)
                    fill = _time_steps(m, batch, steps, cache, fill=True) if cache is not None else []
                    if cache is not None:
                        _time_steps(m, batch, 1, cache, fill=False)  # fills the store for the served steps
                    served = _time_steps(m, batch, steps, cache, fill=False)
                finally:
                    if cache is not None:
                        cache.detach()
            return fill, served, None if cache is None else cache.disabled

        _, full, _ = run(False, 0)
        samples["full"] = full
        served: dict[str, float] = {}
        fills: dict[str, float] = {}
        for k in range(0, n + 1):
            name = "embeddings" if k == 0 else blocks.blocks[k - 1].name
            if k == 0 and "embeddings" not in blocks.names:
                continue
            fill, srv, off = run(True, k)
            if off:
                uncached[name] = off
            samples[name] = srv
            served[name] = statistics.median(srv)
            fills[name] = statistics.median(fill) if fill else served[name]
    finally:
        if threads is not None:
            torch.set_num_threads(before)
    ids = batch.get("input_ids")
    shape = (int(ids.shape[0]), int(ids.shape[1])) if torch.is_tensor(ids) and ids.dim() == 2 else (0, 0)
    return PrefixSavings(full=statistics.median(samples["full"]), served=served, fill=fills, batch_shape=shape,
                         steps=steps, threads=torch.get_num_threads() if threads is None else int(threads),
                         samples=samples, uncached=uncached)

