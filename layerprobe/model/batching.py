"""Tokenize once, pad per batch: shared by the probe runner and the training loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["KEYS", "collate", "encode", "pad_id"]

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict]:
    """Tokenize every text once, without padding; one dict of token lists per text."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in KEYS if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or 0 (padding is masked out, so any id works) for e.g. GPT-2."""
    return tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0


def collate(examples: list[dict], pad: int = 0, device: Any = None) -> dict[str, torch.Tensor]:
    """Right-pad a list of encodings to the longest one; always returns an attention mask.

    >>> collate([{"input_ids": [5, 6]}, {"input_ids": [7]}])["attention_mask"].tolist()
    [[1, 1], [1, 0]]
    """
    width = max(len(e["input_ids"]) for e in examples)
    out = {}
    for key in examples[0]:
        fill = pad if key == "input_ids" else 0
        out[key] = torch.tensor([list(e[key]) + [fill] * (width - len(e[key])) for e in examples], device=device)
    if "attention_mask" not in out:
        out["attention_mask"] = torch.tensor(
            [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples], device=device
        )
    return out
