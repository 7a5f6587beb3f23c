"""Tokenize once, pad per batch: shared by the probe runner and the training loop."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["KEYS", "PROBE_BATCH_SIZE", "collate", "encode", "forward_inputs", "length_batches", "longest_first",
           "pad_id", "pad_known"]

KEYS = ("input_ids", "attention_mask", "token_type_ids")

#: rows per probe pass of the tracker and the revert test: on a CPU, MiniLM-L6 with one thread costs 15-20% less
#: per token in batches of 8-16 rows than of 64 at the same width, and batches of similar length pad less
#: (Rotten Tomatoes' 128 tracked texts: 0.58 of the CPU of one unsorted batch of 64; benchmarks/bench_revert.py)
PROBE_BATCH_SIZE = 16


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


def longest_first(examples: Sequence[dict]) -> list[int]:
    """The examples' indices, longest first (ties in their order): batches of similar length pad least.

    >>> longest_first([{"input_ids": [1]}, {"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6]}])
    [1, 2, 0, 3]
    """
    return sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))


def length_batches(examples: Sequence[dict], batch_size: int, pad: int = 0, device: Any = None) -> list[dict]:
    """The examples collated in batches of ``batch_size``, longest first (for statistics over all of them:
    the batches are not in the examples' order)."""
    order = longest_first(examples)
    return [collate([examples[i] for i in order[s:s + batch_size]], pad, device)
            for s in range(0, len(order), batch_size)]


#: heads of an encoder-decoder model that read the decoder's states at the input's own positions (BART's
#: classifier at the end-of-sequence tokens): the model shifts the input into the decoder itself
_SAME_LENGTH_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def forward_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The arguments of one probe pass ``model(**forward_inputs(model, batch))``: only the inputs the model's
    ``forward`` takes (no ``token_type_ids`` for a model without them), no key/value cache, and for an
    encoder-decoder model that needs decoder inputs and has none, its decoder start token (one position:
    the encoder reads the whole input, the decoder gives the first output token's distribution)."""
    params = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {k: v for k, v in batch.items() if k in params or takes_any}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    config = getattr(model, "config", None)
    if (getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params
            and "decoder_input_ids" not in kwargs and "decoder_inputs_embeds" not in kwargs
            and not type(model).__name__.endswith(_SAME_LENGTH_HEADS) and "input_ids" in batch):
        start = getattr(config, "decoder_start_token_id", None)
        start = start if start is not None else getattr(config, "pad_token_id", None)
        if start is not None:
            ids = batch["input_ids"]
            kwargs["decoder_input_ids"] = torch.full((ids.shape[0], 1), int(start), dtype=ids.dtype,
                                                     device=ids.device)
    return kwargs


@contextmanager
def pad_known(model: nn.Module, pad: int) -> Iterator[None]:
    """While inside, the model's config names ``pad`` as its padding token if it names none: a decoder's
    sequence-classification head finds each row's last real token by it and refuses batches of more than
    one row without it. The config is put back on exit."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "pad_token_id") or config.pad_token_id is not None:
        yield
        return
    config.pad_token_id = int(pad)
    try:
        yield
    finally:
        config.pad_token_id = None
