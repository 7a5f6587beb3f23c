"""Frozen-prefix feature cache: run a frozen bottom prefix once, train the rest on its outputs.

When the embeddings and the bottom ``k`` blocks are frozen, their output for a training example
never changes, so recomputing it every epoch (as plain freezing does) only spends time. This
module computes the prefix output once per training example (:func:`build_cache`), stores it
with padding trimmed (one ``(L_i, d)`` slice per example, concatenated), and trains only
``encoder.layer[k:]`` + pooler + classifier on the cached states (:func:`train_on_cache`),
calling the remaining blocks itself with the same bidirectional attention mask the model builds.

What changes compared with freezing without the cache: the prefix runs in **eval mode** when the
cache is built, so the dropout inside the frozen part (embeddings dropout, attention and hidden
dropout of blocks ``< k``) is gone — the trainable blocks see one deterministic input per example
instead of a freshly noised one each epoch. That removes a source of regularisation (and of
noise); the trainable part keeps its own dropout. With one epoch each example is seen once, so
only the noise differs. Everything else (optimizer, schedule, batch order, loss) is the same as
:func:`layerprobe.train.fine_tune` with the same seed.

Supported: ``BertForSequenceClassification`` (BERT, MiniLM and other BERT-architecture
checkpoints) as an encoder with absolute positions. Anything else raises
:class:`~layerprobe.errors.LayerProbeError` rather than silently computing something different.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ._atomic import atomic_write_bytes
from .batching import collate, encode, pad_id
from .errors import LayerProbeError

__all__ = ["FeatureCache", "build_cache", "cached_logits", "check_supported", "prefix_forward",
           "suffix_forward", "train_on_cache"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_supported(model: nn.Module, k: int | None = None) -> None:
    """Raise :class:`LayerProbeError` unless the cache can reproduce ``model`` exactly.

    Args:
        model: the classifier.
        k: number of frozen blocks (0..num_hidden_layers), checked if given.
    """
    from transformers import BertForSequenceClassification

    if not isinstance(model, BertForSequenceClassification):
        raise LayerProbeError(
            f"the frozen-prefix feature cache supports BertForSequenceClassification (BERT, MiniLM) only, "
            f"got {type(model).__name__}")
    cfg = model.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise LayerProbeError("the feature cache supports encoder-only BERT (is_decoder=False)")
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise LayerProbeError(
            f"the feature cache supports absolute positions, got {cfg.position_embedding_type=}")
    n = len(model.bert.encoder.layer)
    if k is not None and not 0 <= k <= n:
        raise LayerProbeError(f"cannot cache a prefix of {k} blocks of a {n}-block model")


def _mask(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The attention mask the model itself builds for ``hidden`` (eager, sdpa, ... alike)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)


def prefix_forward(model: nn.Module, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states after the embeddings and blocks ``0..k-1``: ``(batch, seq, d)``."""
    bert = model.bert
    h = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    mask = _mask(model, h, attention_mask)
    for layer in bert.encoder.layer[:k]:
        h = layer(h, mask)
    return h


def suffix_forward(model: nn.Module, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Blocks ``k..`` + pooler + dropout + classifier on cached states; returns ``(logits, loss)``.

    The loss follows ``BertForSequenceClassification``: cross-entropy for integer labels with
    ``num_labels > 1``, mean squared error for ``num_labels == 1``.
    """
    bert = model.bert
    mask = _mask(model, hidden, attention_mask)
    h = hidden
    for layer in bert.encoder.layer[k:]:
        h = layer(h, mask)
    pooled = bert.pooler(h) if bert.pooler is not None else h[:, 0]
    logits = model.classifier(model.dropout(pooled))
    loss = None
    if labels is not None:
        if model.num_labels == 1:
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        elif labels.dtype in (torch.long, torch.int):
            loss = nn.functional.cross_entropy(logits.view(-1, model.num_labels), labels.view(-1))
        else:
            raise LayerProbeError(f"feature cache training supports integer class labels or regression, "
                                  f"got labels of dtype {labels.dtype}")
    return logits, loss


@dataclass
class FeatureCache:
    """Prefix outputs of n examples, padding trimmed: example i is ``hidden[offsets[i]:offsets[i+1]]``.

    Attributes:
        hidden: ``(total_tokens, d)`` states, in the storage dtype.
        offsets: ``(n + 1,)`` int64 row offsets.
        k: number of frozen blocks below the cached states (the embeddings are always frozen).
        build_seconds: wall time of :func:`build_cache`.
    """

    hidden: torch.Tensor
    offsets: torch.Tensor
    k: int
    build_seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def nbytes(self) -> int:
        """Memory held by the cache (states + offsets), in bytes."""
        return self.hidden.numel() * self.hidden.element_size() + self.offsets.numel() * 8

    def batch(self, idx: Sequence[int], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(b, L, d)`` states (zeros at padding) and the ``(b, L)`` attention mask."""
        lens = [int(self.offsets[i + 1] - self.offsets[i]) for i in idx]
        width = max(lens)
        out = torch.zeros(len(idx), width, self.hidden.shape[1], dtype=dtype)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, lens)):
            s = int(self.offsets[i])
            out[row, :n] = self.hidden[s : s + n]
            mask[row, :n] = 1
        return out, mask

    def save(self, path: str | os.PathLike) -> str:
        """Write the cache as a safetensors file (atomically); returns the path."""
        from safetensors.torch import save

        data = save({"hidden": self.hidden.contiguous(), "offsets": self.offsets.contiguous()},
                    metadata={"format": "layerprobe-feature-cache", "k": str(self.k)})
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureCache:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "layerprobe-feature-cache":
                    raise LayerProbeError("not a layerprobe feature cache", path)
                return cls(hidden=f.get_tensor("hidden"), offsets=f.get_tensor("offsets"), k=int(meta["k"]))
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            if isinstance(exc, LayerProbeError):
                raise
            raise LayerProbeError(f"cannot read the feature cache: {exc}", path) from None


@torch.no_grad()
def build_cache(model: nn.Module, tokenizer, texts: Sequence[str], k: int, max_length: int = 64,
                batch_size: int = 64, dtype: str | torch.dtype = "float32", progress: bool = True) -> FeatureCache:
    """Run the embeddings and blocks ``0..k-1`` once over ``texts`` (eval mode, no grad).

    Args:
        model: a ``BertForSequenceClassification``; its train/eval mode is restored.
        tokenizer: its tokenizer.
        texts: the training texts (order kept: cache row i is text i).
        k: frozen blocks below the cache (0 = embeddings only).
        max_length: truncation, as in training.
        batch_size: examples per forward pass.
        dtype: storage dtype, ``"float32"`` (exact) or ``"float16"``/``"bfloat16"`` (half the memory).
        progress: show a progress bar.
    """
    check_supported(model, k)
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise LayerProbeError(f"cache dtype must be one of {list(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    data = encode(tokenizer, texts, max_length)
    lens = torch.tensor([len(e["input_ids"]) for e in data], dtype=torch.long)
    offsets = torch.zeros(len(data) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lens, 0)
    d = model.config.hidden_size
    hidden = torch.empty(int(offsets[-1]), d, dtype=dtype)
    order = sorted(range(len(data)), key=lambda i: -len(data[i]["input_ids"]))
    pad, device = pad_id(tokenizer), next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc="cache", unit="batch", disable=not progress,
                      leave=False):
            idx = order[s : s + batch_size]
            batch = collate([data[i] for i in idx], pad, device)
            h = prefix_forward(model, k, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            for row, i in enumerate(idx):
                n = int(lens[i])
                hidden[int(offsets[i]) : int(offsets[i]) + n] = h[row, :n].to("cpu", dtype)
    finally:
        model.train(was)
    return FeatureCache(hidden=hidden, offsets=offsets, k=k, build_seconds=time.perf_counter() - t0)


@torch.no_grad()
def cached_logits(model: nn.Module, cache: FeatureCache, batch_size: int = 64) -> torch.Tensor:
    """Logits of every cached example through the trainable part (eval mode): ``(n, num_labels)``."""
    check_supported(model, cache.k)
    was = model.training
    model.eval()
    try:
        out = [suffix_forward(model, cache.k, *cache.batch(list(range(s, min(s + batch_size, len(cache))))))[0]
               for s in range(0, len(cache), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def train_on_cache(model: nn.Module, cache: FeatureCache, labels: Sequence[int], config=None,
                   on_step: Sequence[Callable[[int, nn.Module], None]] = (), progress: bool = True,
                   desc: str = "fine-tune (cached)") -> dict:
    """Train blocks ``k..``, pooler and classifier on cached prefix states; the prefix is frozen.

    Same optimizer, schedule, seeded batch order and loss as :func:`layerprobe.train.fine_tune`
    with the same :class:`~layerprobe.train.TrainConfig`; the prefix's ``requires_grad`` is set
    to False (it is never run). The model is updated in place and can be evaluated as usual.

    Returns:
        ``{"seconds", "steps", "trainable_params", "peak_rss_mb", "final_loss", "cache_mb"}``
        (``seconds`` excludes the cache build; see ``cache.build_seconds``).
    """
    from .train import TrainConfig, train_loop

    config = config or TrainConfig()
    check_supported(model, cache.k)
    if len(labels) != len(cache):
        raise LayerProbeError(f"{len(labels)} labels for a cache of {len(cache)} examples")
    bert = model.bert
    for p in bert.embeddings.parameters():
        p.requires_grad_(False)
    for layer in bert.encoder.layer[: cache.k]:
        for p in layer.parameters():
            p.requires_grad_(False)
    y = torch.tensor(list(map(int, labels)))

    def batch_loss(idx: list[int]) -> torch.Tensor:
        hidden, mask = cache.batch(idx)
        return suffix_forward(model, cache.k, hidden, mask, y[idx])[1]

    stats = train_loop(model, len(cache), batch_loss, config, on_step, progress, desc)
    return {**stats, "cache_mb": cache.nbytes / 2**20}
