"""Frozen-prefix feature cache for any Hugging Face model with a block stack, in any training loop.

Once the embeddings and the bottom ``k`` blocks are frozen, their output for a given input never
changes, so recomputing it every epoch only spends time. :class:`PrefixCache` attaches to a model
(no wrapper, no change to its parameter names or ``state_dict``) and, for every batch:

* reads the batch's ``input_ids`` / ``attention_mask`` (and ``token_type_ids`` / ``position_ids``
  when given) from the model's own call, through a forward pre-hook on the top model;
* keys each example by its **content** — the token ids (and segment / position ids) of its
  unpadded tokens and where they start — so shuffling, dynamic padding and any number of epochs
  hit the same entries, and duplicate texts share one;
* when every example of the batch is stored ("hit"), the frozen blocks ``0..k-2`` pass their input
  through untouched and block ``k-1`` returns the stored states, re-padded to the batch's width
  (zeros at padding positions, which attention masks out): the prefix costs a copy;
* otherwise ("miss") it runs the prefix as usual — in **eval mode and without gradients** — and
  stores block ``k-1``'s output of each new example (its unpadded positions).

The trainable blocks, the head, the loss and the optimizer see exactly what they would see with the
prefix frozen, except for one documented difference: **the frozen prefix runs without dropout**
(eval mode), so the trainable blocks get one deterministic input per example instead of a freshly
noised one per epoch. Dropout that the model applies *between* its embeddings and the first block
outside the embeddings module (e.g. GPT-2's ``drop``) is sampled once, when an example is stored.

Requirements, checked on :meth:`PrefixCache.attach`: ``1 <= k <= n_blocks`` and every parameter
of the embeddings entry and of blocks ``0..k-1`` frozen (``requires_grad=False``) — a trainable
parameter below the cache would silently stop learning. A batch without ``input_ids`` (e.g.
``inputs_embeds``) or with a non-contiguous attention mask is computed normally (a miss that is
not stored). The cache holds ``sum(L_i) * d`` values (float32 by default; ``dtype=torch.bfloat16``
halves it); ``max_bytes`` bounds it (beyond it, new examples are computed, not stored).

>>> import torch
>>> from transformers import BertConfig, BertForSequenceClassification
>>> torch.manual_seed(0) and None
>>> m = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
...                                              intermediate_size=20, vocab_size=50, num_labels=2)).eval()
>>> from layerprobe.freeze import freeze
>>> _ = freeze(m, ["embeddings", "block.0", "block.1"])
>>> ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]); mask = (ids != 0).long()
>>> ref = m(input_ids=ids, attention_mask=mask).logits
>>> cache = PrefixCache(m, k=2)
>>> miss = m(input_ids=ids, attention_mask=mask).logits   # fills the cache
>>> hit = m(input_ids=ids[[1, 0]], attention_mask=mask[[1, 0]]).logits  # shuffled: served from it
>>> bool(torch.allclose(hit[[1, 0]], ref, atol=1e-5)), cache.stats()["hit_batches"]
(True, 1)
>>> cache.detach()
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .blocks import Blocks, block_modules, find_blocks
from .errors import LayerProbeError

__all__ = ["PrefixCache"]


def _contiguous_run(mask_row: torch.Tensor) -> tuple[int, int] | None:
    """``(start, length)`` of the single run of ones in a 0/1 mask row, or None if not one run."""
    idx = torch.nonzero(mask_row, as_tuple=False).flatten()
    if idx.numel() == 0:
        return None
    start, end = int(idx[0]), int(idx[-1]) + 1
    if end - start != idx.numel():
        return None
    return start, end - start


class PrefixCache:
    """Serve a frozen bottom prefix (embeddings + blocks ``0..k-1``) from stored outputs.

    Args:
        model: the model the training loop calls (e.g. a ``*ForSequenceClassification``, possibly
            inside DDP: pass the inner module).
        k: number of frozen blocks the cache stands in for (1..n_blocks).
        blocks: the model's entries (found with :func:`~layerprobe.blocks.find_blocks` if None).
        dtype: storage dtype (float32 default: exact; bfloat16/float16: half the memory).
        max_bytes: stop storing new examples beyond this many bytes (None: no bound).
    """

    def __init__(self, model: nn.Module, k: int, blocks: Blocks | None = None,
                 dtype: torch.dtype = torch.float32, max_bytes: int | None = None) -> None:
        self.model = model
        self.blocks = blocks if blocks is not None else find_blocks(model)
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.k = 0
        self._store: dict[bytes, torch.Tensor] = {}
        self._nbytes = 0
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        self._batch: dict | None = None
        self._format: tuple[str, int] | None = None
        self.hit_batches = self.miss_batches = self.stored = self.uncached_batches = 0
        self.fill_cpu_seconds = 0.0
        self.attach(k)

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self, k: int) -> None:
        """(Re)attach for a prefix of ``k`` blocks; a different ``k`` empties the store."""
        n = len(self.blocks.blocks)
        if not 1 <= int(k) <= n:
            raise LayerProbeError(f"the prefix cache needs 1 <= k <= {n} frozen blocks, got {k=}")
        k = int(k)
        entries = (["embeddings"] if "embeddings" in self.blocks.names else []) + \
            [b.name for b in self.blocks.blocks[:k]]
        trainable = []
        for name, p in self.model.named_parameters():
            e = self.blocks.entry_of(name)
            if e is not None and e.name in entries and p.requires_grad:
                trainable.append(name)
        if trainable:
            raise LayerProbeError(
                f"the prefix cache stands in for {', '.join(entries)}, but {len(trainable)} of their parameters "
                f"still train (e.g. {trainable[0]}): freeze the prefix first")
        if self._handles and k == self.k:
            return
        self.detach()
        if k != self.k:
            self._store.clear()
            self._nbytes = 0
            self._format = None
        self.k = k
        self._handles.append(self.model.register_forward_pre_hook(self._read_batch, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._end_batch, always_call=True))
        mods = block_modules(self.model, self.blocks)
        for mod in mods.get("embeddings", []):
            self._patch(mod, self._frozen_call)
        for i, ref in enumerate(self.blocks.blocks[:k]):
            (mod,) = mods[ref.name]
            self._patch(mod, self._block_call(i == k - 1))

    def detach(self) -> None:
        """Remove every hook and patched forward (the store is kept for a later :meth:`attach`)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod in self._patched:
            mod.__dict__.pop("forward", None)
        self._patched.clear()
        self._batch = None

    def clear(self) -> None:
        """Forget every stored example."""
        self._store.clear()
        self._nbytes = 0

    def stats(self) -> dict:
        """Counters: batches served / filled / not cacheable, examples stored, bytes, fill CPU time."""
        return {"k": self.k, "hit_batches": self.hit_batches, "miss_batches": self.miss_batches,
                "uncached_batches": self.uncached_batches, "stored": self.stored, "examples": len(self._store),
                "mb": self._nbytes / 2**20, "fill_cpu_seconds": self.fill_cpu_seconds}

    def __len__(self) -> int:
        return len(self._store)

    # -- internals ------------------------------------------------------------------------------

    def _patch(self, mod: nn.Module, make: Callable[[nn.Module, Callable], Callable]) -> None:
        orig = type(mod).forward.__get__(mod)
        mod.forward = make(mod, orig)  # instance attribute: shadows the class's forward, state_dict unchanged
        self._patched.append(mod)

    def _keys(self, kwargs: dict, args: tuple) -> dict | None:
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        if ids is None or not torch.is_tensor(ids) or ids.dim() != 2:
            return None
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        if not torch.is_tensor(mask) or mask.shape != ids.shape:
            return None
        extra: list[torch.Tensor] = [t for t in (kwargs.get(n) for n in ("token_type_ids", "position_ids"))
                                     if torch.is_tensor(t) and t.shape == ids.shape]
        keys, runs = [], []
        ids_c, mask_c = ids.detach().cpu(), mask.detach().cpu()
        extra_c = [t.detach().cpu() for t in extra]
        for r in range(ids.shape[0]):
            run = _contiguous_run(mask_c[r] != 0)
            if run is None:
                return None
            s, n = run
            h = hashlib.blake2b(digest_size=20)
            h.update(f"{s}|{n}|{len(extra_c)}|".encode())
            h.update(ids_c[r, s: s + n].to(torch.int64).numpy().tobytes())
            for t in extra_c:
                h.update(t[r, s: s + n].to(torch.int64).numpy().tobytes())
            keys.append(h.digest())
            runs.append(run)
        return {"keys": keys, "runs": runs, "width": ids.shape[1], "device": ids.device}

    def _read_batch(self, module: nn.Module, args: tuple, kwargs: dict):
        b = self._keys(kwargs, args)
        if b is None:
            self.uncached_batches += 1
            self._batch = {"hit": False, "store": False}
            return None
        b["hit"] = self._format is not None and all(key in self._store for key in b["keys"])
        b["store"] = not b["hit"]
        if b["hit"]:
            self.hit_batches += 1
        else:
            self.miss_batches += 1
            b["cpu0"] = time.process_time()
        self._batch = b
        return None

    def _end_batch(self, module: nn.Module, args: Any, output: Any) -> None:
        b = self._batch
        if b is not None and not b.get("hit") and "cpu0" in b:
            self.fill_cpu_seconds += time.process_time() - b["cpu0"]
        self._batch = None

    def _frozen_call(self, mod: nn.Module, orig: Callable) -> Callable:
        def forward(*args, **kwargs):
            b = self._batch
            if b is None:  # called outside a model call (e.g. directly): behave as the module
                return orig(*args, **kwargs)
            with torch.no_grad():
                was = mod.training
                mod.train(False)
                try:
                    return orig(*args, **kwargs)
                finally:
                    mod.train(was)
        return forward

    def _block_call(self, last: bool) -> Callable[[nn.Module, Callable], Callable]:
        def make(mod: nn.Module, orig: Callable) -> Callable:
            def forward(*args, **kwargs):
                b = self._batch
                if b is None:
                    return orig(*args, **kwargs)
                if b["hit"]:
                    hidden = args[0] if args else kwargs["hidden_states"]
                    if last:
                        hidden = self._padded(b, hidden)
                    return self._as_output(hidden)
                with torch.no_grad():
                    was = mod.training
                    mod.train(False)
                    try:
                        out = orig(*args, **kwargs)
                    finally:
                        mod.train(was)
                if self._format is None:
                    self._format = ("tuple", len(out)) if isinstance(out, tuple) else ("tensor", 1)
                if last and b.get("store"):
                    self._put(b, out[0] if isinstance(out, tuple) else out)
                return out
            return forward
        return make

    def _as_output(self, hidden: torch.Tensor):
        kind, n = self._format or ("tensor", 1)
        return hidden if kind == "tensor" else (hidden,) + (None,) * (n - 1)

    def _padded(self, b: dict, like: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(b["keys"]), b["width"], like.shape[-1], dtype=like.dtype, device=like.device)
        for r, (key, (s, n)) in enumerate(zip(b["keys"], b["runs"])):
            out[r, s: s + n] = self._store[key].to(like.device, like.dtype)
        return out

    def _put(self, b: dict, hidden: torch.Tensor) -> None:
        for r, (key, (s, n)) in enumerate(zip(b["keys"], b["runs"])):
            if key in self._store:
                continue
            t = hidden[r, s: s + n].detach().to("cpu", self.dtype).clone()
            size = t.numel() * t.element_size()
            if self.max_bytes is not None and self._nbytes + size > self.max_bytes:
                return
            self._store[key] = t
            self._nbytes += size
            self.stored += 1
