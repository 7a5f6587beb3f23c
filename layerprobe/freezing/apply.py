"""Act on the advice: freeze or unfreeze entries by the names used in compare."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from layerprobe.errors import LayerProbeError, LayerProbeTypeError
from layerprobe.model.blocks import Blocks, find_blocks

__all__ = ["bottom_prefix", "freeze", "parameter_names", "trainable_parameters", "unfreeze"]


def _resolve(model: nn.Module, names: Iterable[str], blocks: Blocks | None) -> tuple[Blocks, set[str]]:
    """The one argument check of freeze, unfreeze and parameter_names."""
    if not isinstance(model, nn.Module):
        raise LayerProbeTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(names, str):
        raise LayerProbeTypeError(f"names must be a list of entry names, got one str {names!r}; write [{names!r}]")
    if hasattr(names, "freeze") and hasattr(names, "train"):  # a Recommendation: its frozen entries
        names = names.freeze
    if not isinstance(names, Iterable):
        raise LayerProbeTypeError(f"names must be a list of entry names (str), got {type(names).__name__}")
    names = list(names)
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None or any(not isinstance(n, str) for n in names):
        raise LayerProbeTypeError(f"names must be a list of entry names (str), found {type(bad).__name__}")
    blocks = blocks if blocks is not None else find_blocks(model)
    wanted = set(names)
    unknown = wanted - set(blocks.names)
    if unknown:
        raise LayerProbeError(f"unknown entries {sorted(unknown)}; the model has {blocks.names}")
    return blocks, wanted


def parameter_names(model: nn.Module, names: Iterable[str], blocks: Blocks | None = None) -> list[str]:
    """Full parameter names belonging to the named entries (e.g. to freeze in another script).

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50))
    >>> parameter_names(m, ["embeddings"])[:2]
    ['embeddings.word_embeddings.weight', 'embeddings.position_embeddings.weight']
    """
    blocks, wanted = _resolve(model, names, blocks)
    out = []
    for n, _ in model.named_parameters():
        e = blocks.entry_of(n)
        if e is not None and e.name in wanted:
            out.append(n)
    return out


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _set(model: nn.Module, names: Iterable[str], flag: bool, blocks: Blocks | None) -> int:
    wanted = set(parameter_names(model, names, blocks))
    for n, p in model.named_parameters():
        if n in wanted:
            p.requires_grad_(flag)
    return trainable_parameters(model)


def freeze(model: nn.Module, names: Iterable[str], blocks: Blocks | None = None) -> int:
    """Set ``requires_grad=False`` on the named entries; returns the trainable parameter count.

    Args:
        model: the model to change in place.
        names: entry names as in compare (``"embeddings"``, ``"block.0"``, ...).
        blocks: entries of ``model`` (found if None).
    """
    return _set(model, names, False, blocks)


def unfreeze(model: nn.Module, names: Iterable[str], blocks: Blocks | None = None) -> int:
    """Set ``requires_grad=True`` on the named entries; returns the trainable parameter count."""
    return _set(model, names, True, blocks)


def bottom_prefix(blocks: Blocks, n_blocks: int, embeddings: bool = True) -> list[str]:
    """Names of the embeddings (optionally) and the bottom ``n_blocks`` blocks."""
    if not 0 <= n_blocks <= len(blocks.blocks):
        raise LayerProbeError(f"cannot freeze {n_blocks} bottom blocks of a {len(blocks.blocks)}-block model")
    names = ["embeddings"] if embeddings and "embeddings" in blocks.names else []
    return names + [b.name for b in blocks.blocks[:n_blocks]]
