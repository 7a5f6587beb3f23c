"""Record every block's representation in ONE forward pass.

``capture`` is a context manager: on enter it registers forward hooks on the embedding stage
(a pre-hook on the first block, whose input *is* the embedding output) and on every block, puts
the model in eval mode and disables grad; on exit it removes exactly the hooks it added and
restores grad mode and the model's train/eval state — also when the forward pass raises.

Hooks copy on capture: each output is unwrapped (Hugging Face blocks may return tuples), pooled
with the attention mask, detached and moved to CPU as float64, so nothing keeps a live
reference to a model tensor. Batches are concatenated once, when read. Each model call gives one
row per example and entry: a block applied several times in one call (ALBERT's weight-shared layer
groups) is read at its last application, the embeddings at the first block's first input.

Pooling (``pooling=``):
    * ``"mean"`` (default): mean over real tokens (padding excluded via the attention mask).
    * ``"first"``: the first token ([CLS] for BERT-style encoders).
    * ``"last"``: the last real token (for decoders; works with left or right padding).
    * ``"tokens"``: every real token vector, rows grouped by example; ``max_tokens`` caps the
      tokens kept per example (evenly spaced). Stored as float32 to bound memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.model.blocks import Blocks, block_modules, find_blocks
from layerprobe.options import DEFAULT_POOLING, POOLINGS

__all__ = ["Capture", "capture", "pool"]


def _unwrap(output: Any) -> torch.Tensor:
    """The hidden states of a block's output: tensor, tuple/list (first item), or ModelOutput."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    if isinstance(output, dict) and output:
        first = next(iter(output.values()))
        if torch.is_tensor(first):
            return first
    raise LayerProbeError(f"cannot read hidden states from a block output of type {type(output).__name__}")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str = DEFAULT_POOLING,
         max_tokens: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pool token states ``(batch, seq, d)`` into per-example vectors, padding excluded.

    Args:
        hidden: ``(batch, seq, d)`` hidden states.
        mask: ``(batch, seq)`` attention mask (1 = real token), or None for all tokens real.
        pooling: one of ``"mean"``, ``"first"``, ``"last"``, ``"tokens"``.
        max_tokens: with ``"tokens"``, keep at most this many tokens per example.

    Returns:
        ``(batch, d)`` float64 for mean/first/last; for ``"tokens"`` a pair
        ``(rows (n_tokens, d) float32, example (n_tokens,) int64 index within the batch)``.

    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]]); m = torch.tensor([[1, 1, 0]])
    >>> pool(h, m, "mean").tolist(), pool(h, m, "last").tolist()
    ([[2.0]], [[3.0]])
    """
    if hidden.dim() != 3:
        raise LayerProbeError(f"expected hidden states (batch, seq, d), got {tuple(hidden.shape)=}")
    b, t, _ = hidden.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=hidden.device)
    mask = mask.to(hidden.device).bool()
    if mask.shape != (b, t):
        raise LayerProbeError(f"attention mask {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape)}")
    if not bool(mask.any(dim=1).all()):
        raise LayerProbeError("an example has no real token (attention mask all zero)")
    if pooling == "mean":
        h = hidden.double() * mask.unsqueeze(-1)
        return h.sum(1) / mask.sum(1, keepdim=True)
    if pooling == "first":
        first = mask.float().argmax(1)
        return hidden[torch.arange(b), first].double()
    if pooling == "last":
        pos = torch.arange(t, device=hidden.device).expand(b, t)
        last = torch.where(mask, pos, torch.full_like(pos, -1)).max(1).values
        return hidden[torch.arange(b), last].double()
    if pooling == "tokens":
        keep = mask.clone()
        if max_tokens is not None:
            lengths = mask.sum(1)
            for i in torch.nonzero(lengths > max_tokens).flatten().tolist():
                idx = torch.nonzero(mask[i]).flatten()
                pick = idx[torch.linspace(0, len(idx) - 1, max_tokens).round().long()]
                keep[i] = False
                keep[i, pick] = True
        rows = hidden[keep].float()
        example = torch.nonzero(keep)[:, 0]
        return rows, example
    raise LayerProbeError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


@dataclass
class Capture:
    """What :func:`capture` records; read ``.outputs`` after the forward passes."""

    names: list[str]
    pooling: str = DEFAULT_POOLING
    max_tokens: int | None = None
    _chunks: dict[str, list] = field(default_factory=dict)
    _examples: list[torch.Tensor] = field(default_factory=list)
    _mask: torch.Tensor | None = None
    _seen: int = 0
    _batch: int = 0
    _pending: dict[str, Any] = field(default_factory=dict)

    def _record(self, name: str, hidden: torch.Tensor, first_call: bool = False) -> None:
        """Pool one call's output into this model call's pending row set.

        A block applied several times in one model call (ALBERT's layer groups share their weights
        across layers) keeps its **last** output, the entry's output after its final application; with
        ``first_call`` (the embeddings, read at the first block's input) the **first** one is kept.
        """
        if first_call and name in self._pending:
            return
        self._batch = hidden.shape[0]
        pooled = pool(hidden.detach(), self._mask, self.pooling, self.max_tokens)
        if self.pooling == "tokens":
            rows, example = pooled
            self._pending[name] = (rows.cpu(), example.cpu())
        else:
            assert isinstance(pooled, torch.Tensor)
            self._pending[name] = pooled.cpu()

    def _commit(self) -> None:
        """Close one model call: one row set per entry (whatever the number of calls of each block)."""
        for name in self.names:
            if name not in self._pending:
                continue
            value = self._pending[name]
            if self.pooling == "tokens":
                rows, example = value
                self._chunks.setdefault(name, []).append(rows)
                if name == self.names[0]:
                    self._examples.append(example + self._seen)
            else:
                self._chunks.setdefault(name, []).append(value)
        self._pending.clear()
        self._seen += self._batch
        self._batch = 0

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """``{entry name: (n, d) representations}`` in the order of the forward passes."""
        return {n: torch.cat(self._chunks[n]) for n in self.names if self._chunks.get(n)}

    @property
    def token_examples(self) -> torch.Tensor | None:
        """With ``pooling="tokens"``: the example index of every row of ``outputs``."""
        return torch.cat(self._examples) if self._examples else None


@contextmanager
def capture(
    model: nn.Module,
    blocks: Blocks | None = None,
    pooling: str = DEFAULT_POOLING,
    max_tokens: int | None = None,
) -> Iterator[Capture]:
    """Record every entry's pooled output during the forward passes run inside the block.

    The attention mask is read from the model call's ``attention_mask`` keyword (pass it by
    keyword); without one every token counts as real.

    Args:
        model: a Hugging Face model (bare or with a head).
        blocks: entries from :func:`find_blocks` (found if None).
        pooling: ``"mean"``, ``"first"``, ``"last"`` or ``"tokens"``.
        max_tokens: per-example token cap for ``"tokens"``.

    Yields:
        :class:`Capture`; ``.outputs`` maps entry names to ``(n, d)`` tensors.

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50))
    >>> ids = torch.tensor([[2, 5, 7, 0]]); mask = torch.tensor([[1, 1, 1, 0]])
    >>> with capture(m) as cap:
    ...     _ = m(input_ids=ids, attention_mask=mask)
    >>> {k: tuple(v.shape) for k, v in cap.outputs.items()}
    {'embeddings': (1, 16), 'block.0': (1, 16), 'block.1': (1, 16)}
    """
    if pooling not in POOLINGS:
        raise LayerProbeError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    blocks = blocks if blocks is not None else find_blocks(model)
    modules = block_modules(model, blocks)
    cap = Capture(names=blocks.names, pooling=pooling, max_tokens=max_tokens)
    first_block = modules[blocks.blocks[0].name][0]

    def grab_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
            mask = None if ids is None or ids.dim() != 2 else torch.ones_like(ids)
        cap._mask = mask

    def after_stack(_module, _args, _output):
        cap._commit()

    # one row set per pass of the module that runs the block stack (e.g. ``bert.encoder``): rows of
    # two calls are never mixed, whichever module the caller runs (the top model or its base model)
    paths = {id(m): n for n, m in model.named_modules()}
    parts = paths.get(id(first_block), "").split(".")
    stack_owner = model.get_submodule(".".join(parts[:-2])) if len(parts) >= 2 else model

    def embeddings_hook(_module, args, kwargs):
        hidden = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
        if hidden is None:
            raise LayerProbeError("cannot read the input of the first block (no hidden_states)")
        cap._record("embeddings", hidden, first_call=True)

    def block_hook(name):
        def hook(_module, _args, output):
            cap._record(name, _unwrap(output))

        return hook

    was_training = model.training
    grad_was = torch.is_grad_enabled()
    handles = []
    try:
        handles.append(model.register_forward_pre_hook(grab_mask, with_kwargs=True))
        handles.append(stack_owner.register_forward_hook(after_stack))
        if blocks.entries[0].kind == "embeddings":
            handles.append(first_block.register_forward_pre_hook(embeddings_hook, with_kwargs=True))
        for entry in blocks.blocks:
            handles.append(modules[entry.name][0].register_forward_hook(block_hook(entry.name)))
        model.eval()
        torch.set_grad_enabled(False)
        yield cap
        cap._commit()  # rows of a forward pass not made through the top model (e.g. its base model)
    finally:
        for h in handles:
            h.remove()
        torch.set_grad_enabled(grad_was)
        model.train(was_training)
