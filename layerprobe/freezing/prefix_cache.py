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

import hashlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.model.blocks import Blocks, block_modules, find_blocks, find_stack

__all__ = ["PrefixCache", "PrefixCacheOffWarning"]


class PrefixCacheOffWarning(UserWarning):
    """A :class:`PrefixCache` found at run time that it cannot stand in for the prefix and turned itself off."""


def _contiguous_run(mask_row: torch.Tensor) -> tuple[int, int] | None:
    """``(start, length)`` of the single run of ones in a 0/1 mask row, or None if not one run."""
    idx = torch.nonzero(mask_row, as_tuple=False).flatten()
    if idx.numel() == 0:
        return None
    start, end = int(idx[0]), int(idx[-1]) + 1
    if end - start != idx.numel():
        return None
    return start, end - start


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden states a block is called with: its first positional tensor or ``hidden_states=``."""
    if args and torch.is_tensor(args[0]):
        return args[0]
    h = kwargs.get("hidden_states")
    return h if torch.is_tensor(h) else None


def _tensors(x: Any) -> list[torch.Tensor]:
    """The tensors in a call argument (a tensor, or tuples / lists / dicts of them)."""
    if torch.is_tensor(x):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _needs_grad(args: tuple, kwargs: dict) -> bool:
    """Whether a call's inputs depend on a trainable parameter (their autograd graph reaches one): such a
    call must neither run without grad nor be served from the store.

    A tensor that merely requires grad without a trainable parameter behind it (the embeddings' output
    after ``enable_input_require_grads()``, which gradient checkpointing turns on) does not count.
    """
    if not torch.is_grad_enabled():
        return False
    nodes = []
    for t in _tensors(args) + _tensors(kwargs):
        if t.requires_grad:
            if isinstance(t, nn.Parameter):
                return True
            if t.grad_fn is not None:
                nodes.append(t.grad_fn)
    seen: set = set()
    while nodes:
        node = nodes.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(getattr(node, "variable", None), nn.Parameter):  # AccumulateGrad of a trainable parameter
            return True
        nodes.extend(n for n, _ in node.next_functions if n is not None)
    return False


def _requiring_grad(out: Any) -> Any:
    """A block's output (computed without grad) with its hidden states marked as requiring grad."""
    if torch.is_tensor(out):
        return out.requires_grad_(True)
    if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        return (out[0].requires_grad_(True),) + out[1:]
    return out


def _encoder_decoder_refusal(model: nn.Module, blocks: Blocks, first_block: nn.Module) -> str | None:
    """Why the cache cannot stand in for this stack of an encoder-decoder model (None: it can)."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False):
        return None
    get_encoder = getattr(model, "get_encoder", None)
    try:
        encoder = get_encoder() if callable(get_encoder) else None
    except (AttributeError, NotImplementedError):
        encoder = None
    if isinstance(encoder, nn.Module) and any(m is first_block for m in encoder.modules()):
        return None
    hint = ""
    if isinstance(encoder, nn.Module):
        path = next((n for n, m in model.named_modules() if m is encoder), None)
        try:
            stack, _ = find_stack(encoder)
        except LayerProbeError:
            stack = ""
        if path is not None and stack:
            hint = (f"; to freeze and cache the encoder's bottom blocks instead, use "
                    f"blocks=find_blocks(model, blocks='{path}.{stack}.*')")
    return (f"{type(model).__name__} is an encoder-decoder model and its block stack {blocks.stack!r} is not in "
            "its encoder: those blocks also read the encoder's output and the decoder_input_ids, which the cache "
            f"does not key on{hint}")


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

    Use it as a context manager so that an exception mid-training removes its hooks and patched
    forwards (``with PrefixCache(model, k): train(...)``); only the cache's own hooks are removed.
    """

    def __init__(self, model: nn.Module, k: int, blocks: Blocks | None = None,
                 dtype: torch.dtype = torch.float32, max_bytes: int | None = None) -> None:
        self.model = model
        self.blocks = blocks if blocks is not None else find_blocks(model)
        self.dtype = dtype
        self.max_bytes = max_bytes
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
        refusal = _encoder_decoder_refusal(self.model, self.blocks, mods[self.blocks.blocks[0].name][0])
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
        for mod, previous in reversed(self._patched):
            if previous is None:
                mod.__dict__.pop("forward", None)
            else:  # e.g. accelerate's device hook, there before ours
                mod.forward = previous
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

    def stats(self) -> dict:
        """Counters: batches served / filled / not cacheable, examples stored, bytes, fill CPU time; and
        ``disabled``, why the cache turned itself off (None while it stands in)."""
        return {"k": self.k, "hit_batches": self.hit_batches, "miss_batches": self.miss_batches,
                "uncached_batches": self.uncached_batches, "stored": self.stored, "examples": len(self._store),
                "mb": self._nbytes / 2**20, "fill_cpu_seconds": self.fill_cpu_seconds, "disabled": self.disabled}

    def __len__(self) -> int:
        return len(self._store)

    # -- internals ------------------------------------------------------------------------------

    def _patch(self, mod: nn.Module, make: Callable[[nn.Module, Callable], Callable]) -> None:
        previous = mod.__dict__.get("forward")  # an instance forward set by someone else (accelerate) is kept
        orig = previous if previous is not None else type(mod).forward.__get__(mod)
        mod.forward = make(mod, orig)  # instance attribute: shadows the class's forward, state_dict unchanged
        self._patched.append((mod, previous))

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
        kwargs = self._call_arguments(args, kwargs)
        ids = kwargs.get("input_ids")
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
        if self.disabled is not None:
            self._batch = None  # patched forwards then call the original ones
            self.uncached_batches += 1
            return None
        config = getattr(self.model, "config", None)
        named = self._call_arguments(args, kwargs)
        wants_layers = any(bool(getattr(config, f, False) if named.get(f) is None else named[f])
                           for f in ("output_hidden_states", "output_attentions"))  # per-layer outputs: computed
        b = None if wants_layers else self._keys(named, ())
        if b is None:
            self.uncached_batches += 1
            self._batch = {"hit": False, "store": False}
        else:
            b["hit"] = self._last_calls is not None and all(key in self._store for key in b["keys"])
            b["store"] = not b["hit"]
            if b["hit"]:
                self.hit_batches += 1
            else:
                self.miss_batches += 1
                b["cpu0"] = time.process_time()
            self._batch = b
        self._batch.update(calls=0, last_calls=0, rest_calls=0, problem=None, last_out=None)
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
        if b["hit"] and output is not None and b["last_calls"] != self._last_calls:
            raise LayerProbeError(  # the filling passes applied block k-1 a different number of times
                f"PrefixCache: block {self.blocks.blocks[self.k - 1].name} was applied {b['last_calls']} times in a "
                f"served forward pass, {self._last_calls} times in the passes that filled the store")
        if b["hit"] or not b["store"] or output is None:  # a hit, not cacheable, or the forward raised
            return
        problem = b["problem"] or self._check_pass(b)
        if problem:
            self._disable(problem)
            return
        self._put(b, b["last_out"])

    def _check_pass(self, b: dict) -> str | None:
        """Why this filling pass shows the prefix cannot be served from the store (None: it can)."""
        last = f"block {self.blocks.blocks[self.k - 1].name}"
        if b["last_calls"] == 0:
            return f"{last}, the top of the frozen prefix, was not called in a forward pass"
        if self._last_calls is not None and b["last_calls"] != self._last_calls:
            return (f"{last} was applied {b['last_calls']} times in one forward pass and {self._last_calls} "
                    "times in another")
        hidden = b["last_out"]
        if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != (len(b["keys"]), b["width"]):
            shape = None if hidden is None else tuple(hidden.shape)
            return (f"{last} returned hidden states of shape {shape}, not (batch, seq, d) with "
                    f"(batch, seq) = {(len(b['keys']), b['width'])} as the input ids")
        self._last_calls = b["last_calls"]
        return None

    def _frozen_call(self, mod: nn.Module, orig: Callable) -> Callable:
        def forward(*args, **kwargs):
            b = self._batch
            if b is None or _needs_grad(args, kwargs):  # outside a model call, or fed by trainable parameters
                return orig(*args, **kwargs)
            with torch.no_grad():
                was = mod.training
                mod.train(False)
                try:
                    return orig(*args, **kwargs)
                finally:
                    mod.train(was)
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
                if _needs_grad(args, kwargs):
                    if not (b["hit"] or b["store"]):  # a pass that is not cached: computed exactly as without
                        return orig(*args, **kwargs)
                    if b["hit"] and not first:  # earlier prefix blocks already passed their input through
                        raise LayerProbeError(
                            f"PrefixCache: block {name} of the frozen prefix was called with an input that depends "
                            "on trainable parameters after stored states were served")
                    self._disable(f"block {name} of the frozen prefix is called with an input that depends on "
                                  "trainable parameters")
                    return orig(*args, **kwargs)
                hidden = _hidden_of(args, kwargs)
                if b["hit"]:
                    if hidden is None:
                        raise LayerProbeError(f"PrefixCache: cannot find the hidden states block {name} is called with")
                    if last:
                        b["last_calls"] += 1
                        if b["last_calls"] == self._last_calls:  # block k-1's final application
                            hidden = self._padded(b, hidden).requires_grad_(hidden.requires_grad)
                    return self._as_output(hidden)
                with torch.no_grad():
                    was = mod.training
                    mod.train(False)
                    try:
                        out = orig(*args, **kwargs)
                    finally:
                        mod.train(was)
                if hidden is not None and hidden.requires_grad and torch.is_grad_enabled():
                    out = _requiring_grad(out)  # as the input did (gradient checkpointing needs it)
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
