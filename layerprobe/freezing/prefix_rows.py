"""Row-level helpers of :class:`~layerprobe.freezing.prefix_cache.PrefixCache`: content keys of a
batch's examples, which call arguments are per example, and running a frozen block on a subset of a
batch's rows (what serving a partly stored batch needs)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.model.blocks import Blocks, find_stack

__all__ = ["batch_keys", "contiguous_run", "encoder_decoder_refusal", "frozen_call", "hidden_of", "needs_grad", "no_cache",
           "no_cache_depth", "no_store", "no_store_depth", "padded", "requiring_grad", "rows_of", "run_rows", "tensors_in"]


def contiguous_run(mask_row: torch.Tensor) -> tuple[int, int] | None:
    """``(start, length)`` of the single run of ones in a 0/1 mask row, or None if not one run."""
    idx = torch.nonzero(mask_row, as_tuple=False).flatten()
    if idx.numel() == 0:
        return None
    start, end = int(idx[0]), int(idx[-1]) + 1
    if end - start != idx.numel():
        return None
    return start, end - start


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden states a block is called with: its first positional tensor or ``hidden_states=``."""
    if args and torch.is_tensor(args[0]):
        return args[0]
    h = kwargs.get("hidden_states")
    return h if torch.is_tensor(h) else None


def tensors_in(x: Any) -> list[torch.Tensor]:
    """The tensors in a call argument (a tensor, or tuples / lists / dicts of them)."""
    if torch.is_tensor(x):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in tensors_in(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors_in(v)]
    return []


def needs_grad(args: tuple, kwargs: dict) -> bool:
    """Whether a call's inputs depend on a trainable parameter (their autograd graph reaches one): such a
    call must neither run without grad nor be served from the store.

    A tensor that merely requires grad without a trainable parameter behind it (the embeddings' output
    after ``enable_input_require_grads()``, which gradient checkpointing turns on) does not count.
    """
    if not torch.is_grad_enabled():
        return False
    nodes = []
    for t in tensors_in(args) + tensors_in(kwargs):
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


def rows_of(x: Any, rows: torch.Tensor, n: int, width: int) -> Any:
    """A block call's argument restricted to the batch rows ``rows``: every tensor shaped like a
    per-example one — at least 3-D with first dimension the batch size ``n`` and the sequence width
    among the others (attention masks ``(n, 1, 1, w)``, rotary tables ``(n, w, d)``), or an integer /
    boolean ``(n, w)`` mask or id tensor — is indexed; anything else (broadcast masks ``(1, ...)``, cache
    positions, float tables such as DeBERTa's relative embeddings ``(2 * span, d)``, None) is kept; a
    key/value cache object is dropped (as on a hit, the prefix blocks do not fill it). The first pass
    that could be served in part checks the rule on the model (``PrefixCache._verify_step``)."""
    if torch.is_tensor(x):
        per_example = (x.dim() >= 3 and x.shape[0] == n and width in tuple(x.shape[1:])) or \
            (x.dim() == 2 and tuple(x.shape) == (n, width) and not x.is_floating_point())
        return x.index_select(0, rows.to(x.device)) if per_example else x
    if callable(getattr(x, "get_seq_length", None)) and callable(getattr(x, "update", None)):
        return None  # a key/value cache (decoders with use_cache): the rows' pass neither reads nor fills it
    if isinstance(x, tuple):
        return tuple(rows_of(v, rows, n, width) for v in x)
    if isinstance(x, list):
        return [rows_of(v, rows, n, width) for v in x]
    return x


def requiring_grad(out: Any) -> Any:
    """A block's output (computed without grad) with its hidden states marked as requiring grad."""
    if torch.is_tensor(out):
        return out.requires_grad_(True)
    if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        return (out[0].requires_grad_(True),) + out[1:]
    return out



def batch_keys(kwargs: dict) -> dict | None:
    """Each example's content key (blake2b of its unpadded token ids, segment / position ids and where
    they start) and unpadded run, from the model call's named arguments; None if not cacheable."""
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
        run = contiguous_run(mask_c[r] != 0)
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


def frozen_call(mod: nn.Module, orig: Callable, args: tuple, kwargs: dict) -> Any:
    """``orig(*args, **kwargs)`` as the frozen prefix runs: eval mode (no dropout), no gradients; mode restored."""
    with torch.no_grad():
        was = mod.training
        mod.train(False)
        try:
            return orig(*args, **kwargs)
        finally:
            mod.train(was)


def run_rows(b: dict, mod: nn.Module, orig: Callable, name: str, rows: torch.Tensor,
             hidden: torch.Tensor | None, args: tuple, kwargs: dict) -> torch.Tensor:
    """Run a prefix block (eval mode, no grad) on the batch rows ``rows`` only, its input the rows'
    states carried from the previous prefix block (``b["sub"]``; at the first, ``hidden``'s rows),
    every per-example argument restricted to the rows (:func:`rows_of`); returns and carries the
    rows' output hidden states."""
    n, width = len(b["keys"]), b["width"]
    if hidden is None or hidden.dim() < 2 or hidden.shape[0] != n:
        raise LayerProbeError(f"PrefixCache: block {name} was not called with hidden states of the batch's "
                              f"{n} rows (got {None if hidden is None else tuple(hidden.shape)})")
    sub = b["sub"] if b["sub"] is not None else hidden.index_select(0, rows.to(hidden.device))
    if args and torch.is_tensor(args[0]):
        args = (sub,) + rows_of(args[1:], rows, n, width)
        kwargs = {key: rows_of(v, rows, n, width) for key, v in kwargs.items()}
    else:
        kwargs = {key: (sub if key == "hidden_states" else rows_of(v, rows, n, width))
                  for key, v in kwargs.items()}
        args = rows_of(args, rows, n, width)
    out = frozen_call(mod, orig, args, kwargs)
    if torch.is_tensor(out):
        b["sub"] = out
    elif isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        b["sub"] = out[0]
    else:
        raise LayerProbeError(f"PrefixCache: block {name} returned a {type(out).__name__}, not hidden states")
    return b["sub"]


def encoder_decoder_refusal(model: nn.Module, blocks: Blocks, first_block: nn.Module) -> str | None:
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


def padded(store: dict, b: dict, like: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """The stored states of the batch's rows, zero-padded to its width (rows in ``skip``: zeros)."""
    out = torch.zeros(len(b["keys"]), b["width"], like.shape[-1], dtype=like.dtype, device=like.device)
    skipped = set() if skip is None else set(skip.tolist())
    for r, (key, (s, n)) in enumerate(zip(b["keys"], b["runs"])):
        if r not in skipped:
            out[r, s: s + n] = store[key].to(like.device, like.dtype)
    return out


_NO_STORE = [0]  # depth of module-wide no_store() blocks


@contextmanager
def no_store() -> Iterator[None]:
    """While active, no :class:`~layerprobe.freezing.prefix_cache.PrefixCache` in this process stores new examples (they still serve what
    they hold). The :class:`~layerprobe.tracking.tracker.Tracker` runs its probe passes inside it."""
    _NO_STORE[0] += 1
    try:
        yield
    finally:
        _NO_STORE[0] -= 1


def no_store_depth() -> int:
    """How many :func:`no_store` blocks are active (0: caches may store)."""
    return _NO_STORE[0]


_NO_CACHE = [0]  # depth of module-wide no_cache() blocks


@contextmanager
def no_cache() -> Iterator[None]:
    """While active, no :class:`~layerprobe.freezing.prefix_cache.PrefixCache` in this process serves or
    stores anything: every pass computes its prefix from the weights. The revert test runs inside it (it
    changes the frozen prefix's weights, which stored outputs would hide)."""
    _NO_CACHE[0] += 1
    try:
        yield
    finally:
        _NO_CACHE[0] -= 1


def no_cache_depth() -> int:
    """How many :func:`no_cache` blocks are active (0: caches may serve)."""
    return _NO_CACHE[0]
