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
* when only some are stored ("partial"), the prefix runs — in **eval mode and without gradients** —
  on the other rows only (at the batch's width, with their rows of the attention mask and of every
  other per-example argument), their outputs are stored, and block ``k-1`` returns the whole batch
  assembled in its order: stored rows re-padded as above, computed rows as computed. The blocks
  ``0..k-2`` hand their input up unchanged, as on a hit, so the model only ever sees full batches;
* when none is stored, or before a filling pass has been checked ("miss"), it runs the prefix as
  usual — in eval mode and without gradients — and stores block ``k-1``'s output of each new example
  (its unpadded positions).

Row accounting: :meth:`PrefixCache.stats` counts batches (``hit_batches``, ``partial_batches``,
``miss_batches``, ``uncached_batches``) and rows (``hit_rows`` served from the store, ``miss_rows``
run through the prefix), so the share of the prefix's work saved is ``hit_rows / (hit_rows + miss_rows)``.

What is stored: every pass that reaches the prefix may be served, but a pass only *stores* when
storing is on — not inside ``with cache.no_store():`` (or the module-wide :func:`no_store`, which the
:class:`~layerprobe.tracking.tracker.Tracker` wraps around its probe passes, so probe texts never enter a
training cache), and, with ``store_in_eval=False`` (what the auto-freeze policy uses), not while the
model is in eval mode (an evaluation loop over a dev set). Serving such passes is exact and saves
their prefix; storing them would only spend memory and ``max_bytes`` on examples training never sees.

The trainable blocks, the head, the loss and the optimizer see exactly what they would see with the
prefix frozen, except for one documented difference: **the frozen prefix runs without dropout**
(eval mode), so the trainable blocks get one deterministic input per example instead of a freshly
noised one per epoch. Dropout that the model applies *between* its embeddings and the first block
outside the embeddings module (e.g. GPT-2's ``drop``) is sampled once, when an example is stored.

Requirements, checked on :meth:`PrefixCache.attach`: ``1 <= k <= n_blocks``, every parameter of the
embeddings entry and of blocks ``0..k-1`` frozen (``requires_grad=False``) — a trainable parameter
below the cache would silently stop learning — and, in an encoder-decoder model, a block stack in the
encoder (decoder blocks also read the encoder's output). What only a forward pass can show is checked
on the passes that fill the store, before anything is served; if the prefix turns out not to be a
function of the keyed tokens alone (it is fed by trainable parameters) or its top block hands more than
its hidden states up the stack (T5's position bias), the cache turns itself off with a
:class:`PrefixCacheOffWarning` and training goes on exactly as with plain freezing. A block applied
several times per pass (ALBERT's weight-shared layer groups) is served at its last application.

A batch without ``input_ids`` (e.g. ``inputs_embeds``), with a non-contiguous attention mask, or asking
for every layer's outputs (``output_hidden_states`` / ``output_attentions``) is computed normally (a miss
that is not stored). The cache holds ``sum(L_i) * d`` values (float32 by default;
``dtype=torch.bfloat16`` halves it); ``max_bytes`` bounds it (beyond it, new examples are computed, not
stored).

>>> import torch
>>> from transformers import BertConfig, BertForSequenceClassification
>>> torch.manual_seed(0) and None
>>> m = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
...                                              intermediate_size=20, vocab_size=50, num_labels=2)).eval()
>>> from layerprobe.freezing.apply import freeze
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

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.freezing.prefix_rows import (
    batch_keys,
    encoder_decoder_refusal,
    frozen_call,
    hidden_of,
    needs_grad,
    no_cache_depth,
    no_store,
    no_store_depth,
    padded,
    requiring_grad,
    run_rows,
)
from layerprobe.model.blocks import Blocks, block_modules, find_blocks
from layerprobe.model.forwards import original_forward, restore_forward, set_forward

__all__ = ["PrefixCache", "PrefixCacheOffWarning", "no_store"]

class PrefixCacheOffWarning(UserWarning):
    """A :class:`PrefixCache` found at run time that it cannot stand in for the prefix and turned itself off."""


class PrefixCache:
    """Serve a frozen bottom prefix (embeddings + blocks ``0..k-1``) from stored outputs.

    The prefix must be a function of the keyed tokens alone, and block ``k-1``'s hidden states must
    be all the rest of the model reads from it. :meth:`attach` refuses what it can see up front (a
    trainable prefix, a bad ``k``, the decoder stack of an encoder-decoder model); what only a forward
    pass shows is checked on every pass that fills the store, before any stored output is served, and
    then the cache turns itself off (:attr:`disabled` says why, a :class:`PrefixCacheOffWarning` is
    issued, and every later pass is computed exactly as without the cache):

    * a prefix block called with an input that depends on trainable parameters (a trainable module
      between the embeddings and the blocks);
    * block ``k-1`` returning more than its hidden states (T5's blocks hand their relative position
      bias up the stack), or hidden states not shaped ``(batch, seq, d)`` like the input ids;
    * prefix blocks not called bottom-up before the trainable ones. A block applied several times
      per pass (ALBERT's weight-shared layer groups) is fine: the stored output is that of block
      ``k-1``'s last application.

    Args:
        model: the model the training loop calls (e.g. a ``*ForSequenceClassification``, possibly
            inside DDP: pass the inner module).
        k: number of frozen blocks the cache stands in for (1..n_blocks).
        blocks: the model's entries (found with :func:`~layerprobe.model.blocks.find_blocks` if None).
        dtype: storage dtype (float32 default: exact; bfloat16/float16: half the memory).
        max_bytes: stop storing new examples beyond this many bytes (None: no bound).
        store_in_eval: whether passes with the model in eval mode store new examples (True, the
            default; False: only training-mode passes store, evaluation passes are only served).
        partial: serve the stored rows of a batch that is only partly stored and run the prefix for
            the rest (True, the default); False: such a batch is a miss (the whole prefix runs).

    Use it as a context manager so that an exception mid-training removes its hooks and patched
    forwards (``with PrefixCache(model, k): train(...)``); only the cache's own hooks are removed.
    """

    def __init__(self, model: nn.Module, k: int, blocks: Blocks | None = None,
                 dtype: torch.dtype = torch.float32, max_bytes: int | None = None,
                 store_in_eval: bool = True, partial: bool = True) -> None:
        self.model = model
        self.blocks = blocks if blocks is not None else find_blocks(model)
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.store_in_eval = bool(store_in_eval)
        self.partial = bool(partial)
        self._paused = 0
        self._partial_checked = False  # a pass served in part has been checked against the full prefix
        self.k = 0
        self.disabled: str | None = None
        self._store: dict[bytes, torch.Tensor] = {}
        self._nbytes = 0
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, Any]] = []
        self._batch: dict | None = None
        self._format: tuple[str, int] | None = None
        self._last_calls: int | None = None  # applications of block k-1 per pass, seen on every filling pass
        self._arg_names: list[str] | None = None
        self.hit_batches = self.miss_batches = self.stored = self.uncached_batches = 0
        self.partial_batches = self.hit_rows = self.miss_rows = 0
        self.fill_cpu_seconds = 0.0
        self.attach(k)

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self, k: int) -> None:
        """(Re)attach for a prefix of ``k`` blocks; a different ``k`` empties the store. A cache that has
        turned itself off (:attr:`disabled`) stays off: what turned it off is a property of the model."""
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
        mods = block_modules(self.model, self.blocks)
        refusal = encoder_decoder_refusal(self.model, self.blocks, mods[self.blocks.blocks[0].name][0])
        if refusal:
            raise LayerProbeError(f"the prefix cache cannot stand in for this prefix: {refusal}")
        if self._handles and k == self.k:
            return
        self.detach()
        if k != self.k:
            self.clear()
            self._format = None
            self._last_calls = None  # a cache that turned itself off stays off: its reasons hold for any k
        self.k = k
        self._handles.append(self.model.register_forward_pre_hook(self._read_batch, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._end_batch, always_call=True))
        for mod in mods.get("embeddings", []):
            self._patch(mod, self._frozen_call)
        for i, ref in enumerate(self.blocks.blocks):
            (mod,) = mods[ref.name]
            if i < k:
                self._patch(mod, self._block_call(i))
            else:  # trainable blocks are only watched: a prefix block must not run after one of them
                self._handles.append(mod.register_forward_pre_hook(self._rest_call))

    def detach(self) -> None:
        """Remove every hook and patched forward (the store is kept for a later :meth:`attach`)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mod, previous in reversed(self._patched):  # e.g. accelerate's device hook, there before ours
            restore_forward(mod, previous)
        self._patched.clear()
        self._batch = None

    def __enter__(self) -> PrefixCache:
        """``with PrefixCache(model, k) as cache:`` — attached on construction, detached on exit, also
        when training raises (the model's own forwards come back; the store is kept)."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def clear(self) -> None:
        """Forget every stored example."""
        self._store.clear()
        self._nbytes = 0

    @contextmanager
    def no_store(self) -> Iterator[None]:
        """While active, this cache serves what it holds but stores nothing new (e.g. a user's eval loop)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _storing(self) -> bool:
        """Whether the pass starting now may store new examples."""
        return not (self._paused or no_store_depth() or (not self.store_in_eval and not self.model.training))

    def stats(self) -> dict:
        """Counters: batches served whole (``hit_batches``), in part (``partial_batches``), filled
        (``miss_batches``) and not cacheable (``uncached_batches``); rows served from the store
        (``hit_rows``) and run through the prefix (``miss_rows``, cacheable passes only); examples stored,
        bytes, fill CPU time; and ``disabled``, why the cache turned itself off (None while it stands in)."""
        return {"k": self.k, "hit_batches": self.hit_batches, "partial_batches": self.partial_batches,
                "miss_batches": self.miss_batches, "uncached_batches": self.uncached_batches,
                "hit_rows": self.hit_rows, "miss_rows": self.miss_rows,
                "stored": self.stored, "examples": len(self._store),
                "mb": self._nbytes / 2**20, "fill_cpu_seconds": self.fill_cpu_seconds, "disabled": self.disabled}

    def __len__(self) -> int:
        return len(self._store)

    # -- internals ------------------------------------------------------------------------------

    def _patch(self, mod: nn.Module, make: Callable[[nn.Module, Callable], Callable]) -> None:
        # an instance forward set by someone else (accelerate) is called by ours and comes back on detach
        self._patched.append((mod, set_forward(mod, make(mod, original_forward(mod)))))

    def _disable(self, reason: str) -> None:
        """Stop standing in for the prefix: forget the store; every later pass is computed as usual."""
        self.disabled = reason
        self.clear()
        self._batch = None
        warnings.warn(f"layerprobe PrefixCache(k={self.k}) turned itself off for {type(self.model).__name__}: "
                      f"{reason}; the frozen prefix is computed as usual (same training, no saving)",
                      PrefixCacheOffWarning, stacklevel=3)

    def _call_arguments(self, args: tuple, kwargs: dict) -> dict:
        """The model call's arguments by name (positional ones named from the forward's signature)."""
        if not args:
            return kwargs
        if self._arg_names is None:
            import inspect

            try:
                params = inspect.signature(self.model.forward).parameters.values()
                self._arg_names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                self._arg_names = ["input_ids"]
        return {**dict(zip(self._arg_names, args)), **kwargs}

    def _keys(self, kwargs: dict, args: tuple) -> dict | None:
        return batch_keys(self._call_arguments(args, kwargs))

    def _read_batch(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.disabled is not None:
            self._batch = None  # patched forwards then call the original ones
            self.uncached_batches += 1
            return None
        config = getattr(self.model, "config", None)
        named = self._call_arguments(args, kwargs)
        wants_layers = any(bool(getattr(config, f, False) if named.get(f) is None else named[f])
                           for f in ("output_hidden_states", "output_attentions"))  # per-layer outputs: computed
        b = None if wants_layers or no_cache_depth() else self._keys(named, ())
        if b is None:
            self.uncached_batches += 1
            self._batch = {"hit": False, "store": False, "rows": None}
        else:
            served = self._last_calls is not None  # a filling pass has been checked
            missing = [r for r, key in enumerate(b["keys"]) if key not in self._store] if served else \
                list(range(len(b["keys"])))
            b["hit"] = not missing
            b["rows"] = None
            b["store"] = not b["hit"] and self._storing()
            if b["hit"]:
                self.hit_batches += 1
                self.hit_rows += len(b["keys"])
            elif self.partial and len(missing) < len(b["keys"]) and not self._partial_checked:
                # the first batch that could be served in part runs as a miss, and its rows that are
                # not stored also through the row-restricted prefix: both must agree before any is served
                b["verify"] = torch.tensor(missing, dtype=torch.long)
                self.miss_batches += 1
                self.miss_rows += len(b["keys"])
                b["cpu0"] = time.process_time()
            elif self.partial and len(missing) < len(b["keys"]):
                b["rows"] = torch.tensor(missing, dtype=torch.long)
                self.partial_batches += 1
                self.hit_rows += len(b["keys"]) - len(missing)
                self.miss_rows += len(missing)
                b["cpu0"] = time.process_time()
            else:
                self.miss_batches += 1
                self.miss_rows += len(b["keys"])
                b["cpu0"] = time.process_time()
            if not (b["hit"] or b["store"] or b["rows"] is not None):  # a miss that stores nothing
                b.pop("cpu0", None)
            self._batch = b
        self._batch.setdefault("verify", None)
        self._batch.update(calls=0, last_calls=0, rest_calls=0, problem=None, last_out=None, sub=None)
        return None

    def _rest_call(self, module: nn.Module, args: Any) -> None:
        if self._batch is not None:
            self._batch["rest_calls"] += 1

    def _end_batch(self, module: nn.Module, args: Any, output: Any) -> None:
        b, self._batch = self._batch, None
        if b is None or self.disabled is not None:
            return
        if not b["hit"] and "cpu0" in b:
            self.fill_cpu_seconds += time.process_time() - b["cpu0"]
        served = b["hit"] or b["rows"] is not None
        if served and output is not None and b["last_calls"] != self._last_calls:
            raise LayerProbeError(  # the filling passes applied block k-1 a different number of times
                f"PrefixCache: block {self.blocks.blocks[self.k - 1].name} was applied {b['last_calls']} times in a "
                f"served forward pass, {self._last_calls} times in the passes that filled the store")
        if b["rows"] is not None and b["problem"] is not None and output is not None:
            raise LayerProbeError(f"PrefixCache: {b['problem']} in a forward pass served in part from the store")
        if b["hit"] or not b["store"] or output is None:  # a hit, not stored, or the forward raised
            return
        problem = b["problem"] or self._check_pass(b)
        if problem:
            self._disable(problem)
            return
        if b["rows"] is None:
            self._put(b["keys"], b["runs"], b["last_out"])
        else:
            rows = b["rows"].tolist()
            self._put([b["keys"][r] for r in rows], [b["runs"][r] for r in rows], b["last_out"])

    def _check_pass(self, b: dict) -> str | None:
        """Why this filling pass shows the prefix cannot be served from the store (None: it can)."""
        last = f"block {self.blocks.blocks[self.k - 1].name}"
        if b["last_calls"] == 0:
            return f"{last}, the top of the frozen prefix, was not called in a forward pass"
        if self._last_calls is not None and b["last_calls"] != self._last_calls:
            return (f"{last} was applied {b['last_calls']} times in one forward pass and {self._last_calls} "
                    "times in another")
        hidden = b["last_out"]
        n = len(b["keys"]) if b["rows"] is None else len(b["rows"])
        if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != (n, b["width"]):
            shape = None if hidden is None else tuple(hidden.shape)
            return (f"{last} returned hidden states of shape {shape}, not (batch, seq, d) with "
                    f"(batch, seq) = {(n, b['width'])} as the input ids")
        self._last_calls = b["last_calls"]
        return None

    def _frozen_call(self, mod: nn.Module, orig: Callable) -> Callable:
        def forward(*args, **kwargs):
            b = self._batch
            if b is None or needs_grad(args, kwargs):  # outside a model call, or fed by trainable parameters
                return orig(*args, **kwargs)
            return frozen_call(mod, orig, args, kwargs)
        return forward

    def _block_call(self, i: int) -> Callable[[nn.Module, Callable], Callable]:
        last = i == self.k - 1
        name = self.blocks.blocks[i].name

        def make(mod: nn.Module, orig: Callable) -> Callable:
            def forward(*args, **kwargs):
                b = self._batch
                if b is None:
                    return orig(*args, **kwargs)
                first = b["calls"] == 0
                b["calls"] += 1
                if b["rest_calls"] and b["problem"] is None:
                    b["problem"] = f"block {name} of the frozen prefix ran after a trainable block"
                if needs_grad(args, kwargs):
                    if b["rows"] is not None and first:  # nothing served yet: compute the pass as a miss
                        b["rows"] = None
                    if not (b["hit"] or b["store"] or b["rows"] is not None):  # not cached: computed as without
                        return orig(*args, **kwargs)
                    if (b["hit"] or b["rows"] is not None) and not first:  # earlier blocks passed their input up
                        raise LayerProbeError(
                            f"PrefixCache: block {name} of the frozen prefix was called with an input that depends "
                            "on trainable parameters after stored states were served")
                    self._disable(f"block {name} of the frozen prefix is called with an input that depends on "
                                  "trainable parameters")
                    return orig(*args, **kwargs)
                hidden = hidden_of(args, kwargs)
                if b["hit"]:
                    if hidden is None:
                        raise LayerProbeError(f"PrefixCache: cannot find the hidden states block {name} is called with")
                    if last:
                        b["last_calls"] += 1
                        if b["last_calls"] == self._last_calls:  # block k-1's final application
                            hidden = padded(self._store, b, hidden).requires_grad_(hidden.requires_grad)
                    return self._as_output(hidden)
                if b["rows"] is not None:
                    return self._partial_call(b, mod, orig, name, last, hidden, args, kwargs)
                out = frozen_call(mod, orig, args, kwargs)
                if b["verify"] is not None:
                    self._verify_step(b, mod, orig, name, last, hidden, args, kwargs, out)
                if hidden is not None and hidden.requires_grad and torch.is_grad_enabled():
                    out = requiring_grad(out)  # as the input did (gradient checkpointing needs it)
                if not b["store"]:
                    return out
                if hidden is None and b["problem"] is None:
                    b["problem"] = f"cannot find the hidden states block {name} is called with"
                if torch.is_tensor(out):
                    fmt: tuple[str, int] = ("tensor", 1)
                elif isinstance(out, tuple) and out and torch.is_tensor(out[0]):
                    fmt = ("tuple", len(out))
                else:
                    b["problem"] = b["problem"] or f"block {name} returned a {type(out).__name__}, not hidden states"
                    return out
                if self._format is None:
                    self._format = fmt
                if last:
                    b["last_calls"] += 1
                    b["last_out"] = out if fmt[0] == "tensor" else out[0]
                    extra = [type(x).__name__ for x in (out[1:] if fmt[0] == "tuple" else ()) if x is not None]
                    if extra and b["problem"] is None:
                        b["problem"] = (f"block {name} returns more than its hidden states ({', '.join(extra)} "
                                        "besides them, e.g. T5's relative position bias), which the next blocks "
                                        "read and the cache cannot serve")
                return out
            return forward
        return make

    def _verify_step(self, b: dict, mod: nn.Module, orig: Callable, name: str, last: bool,
                     hidden: torch.Tensor | None, args: tuple, kwargs: dict, out: Any) -> None:
        """On the pass that checks serving in part: the block also runs on the rows that are not stored;
        at block ``k-1``'s last application their states must equal the full prefix's, or serving in
        part is switched off (every such batch is then a miss, as without it)."""
        rows = b["verify"]
        why = None
        try:
            sub = run_rows(b, mod, orig, name, rows, hidden, args, kwargs)
        except Exception as e:  # noqa: BLE001 - any failure of the restricted pass only turns the option off
            why = f"block {name} could not run on a subset of the batch's rows ({type(e).__name__}: {e})"
        if why is None and last and b["last_calls"] + 1 == self._last_calls:
            full = (out if torch.is_tensor(out) else out[0]).index_select(0, rows.to(sub.device))
            if full.shape != sub.shape or not torch.allclose(sub, full, rtol=1e-4, atol=1e-5):  # rows differ
                why = f"block {name}'s output on a subset of the batch's rows differs from the full batch's"
            else:
                self._partial_checked = True
                b["verify"] = None
        if why is not None:
            b["verify"] = None
            self.partial = False
            warnings.warn(f"layerprobe PrefixCache(k={self.k}): {why}; batches only partly stored are computed "
                          "whole from now on (no saving on them)", PrefixCacheOffWarning, stacklevel=3)

    def _partial_call(self, b: dict, mod: nn.Module, orig: Callable, name: str, last: bool,
                      hidden: torch.Tensor | None, args: tuple, kwargs: dict) -> Any:
        """A prefix block in a pass served in part: run it on the rows that are not stored
        (:func:`~layerprobe.freezing.prefix_rows.run_rows`) and hand the block's input up unchanged — except at block ``k-1``'s last
        application, which returns the batch assembled in its order from the store and those rows."""
        rows = b["rows"]
        run_rows(b, mod, orig, name, rows, hidden, args, kwargs)
        assert hidden is not None  # _sub_step checked it
        if not last:
            return self._as_output(hidden)
        b["last_calls"] += 1
        if b["last_calls"] != self._last_calls:  # not block k-1's final application yet
            return self._as_output(hidden)
        b["last_out"] = b["sub"]
        full = padded(self._store, b, hidden, skip=rows)
        full.index_copy_(0, rows.to(full.device), b["sub"].to(full.dtype))
        return self._as_output(full.requires_grad_(hidden.requires_grad))

    def _as_output(self, hidden: torch.Tensor):
        kind, n = self._format or ("tensor", 1)
        return hidden if kind == "tensor" else (hidden,) + (None,) * (n - 1)

    def _put(self, keys: list[bytes], runs: list[tuple[int, int]], hidden: torch.Tensor) -> None:
        for r, (key, (s, n)) in enumerate(zip(keys, runs)):
            if key in self._store:
                continue
            t = hidden[r, s: s + n].detach().to("cpu", self.dtype).clone()
            size = t.numel() * t.element_size()
            if self.max_bytes is not None and self._nbytes + size > self.max_bytes:
                return
            self._store[key] = t
            self._nbytes += size
            self.stored += 1
