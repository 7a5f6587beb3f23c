"""The one tokenizer loader: a directory's own tokenizer, checked against the model it feeds.

Every tokenizer read from a user's directory (a model directory or an adapter directory) goes
through :func:`load_tokenizer`; :func:`fit_max_length` keeps a probe's truncation within the
model's positions.
"""

from __future__ import annotations

import os
from typing import Any

from layerprobe.errors import LayerProbeError, one_line
from layerprobe.io.files import load_json, regular_file
from layerprobe.options import DEFAULT_MAX_LENGTH

__all__ = ["TOKENIZER_FILES", "check_encoded_lengths", "fit_max_length", "load_tokenizer", "max_positions"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "vocab.model")


def load_tokenizer(path: str, model: Any = None) -> Any:
    """The directory's own tokenizer, or None when it has no tokenizer files.

    Never a stand-in: transformers builds a tokenizer from the config alone when the files are
    missing (every word becomes ``[UNK]``), so a tokenizer is only loaded from a directory that
    holds one of its vocabulary files. Unreadable tokenizer files and a vocabulary larger than the
    model's embedding table (ids past the vocabulary) are refused.
    """
    present = [n for n in TOKENIZER_FILES if os.path.lexists(os.path.join(path, n))]
    if not present:
        return None
    for n in present:
        regular_file(os.path.join(path, n), "tokenizer file")
    if os.path.lexists(os.path.join(path, "tokenizer.json")):
        load_json(os.path.join(path, "tokenizer.json"), "tokenizer.json")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many types (Exception from Rust)
        raise LayerProbeError(f"cannot read the tokenizer ({type(exc).__name__}: {one_line(exc, 150)})",
                              os.path.join(path, present[0])) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if isinstance(tok, bool) or not callable(tok):
        raise LayerProbeError("the tokenizer files do not give a usable tokenizer", path)
    emb = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if isinstance(rows, int) and len(tok) > rows:
        raise LayerProbeError(f"the tokenizer has {len(tok)} tokens but the model's embedding table has {rows} rows "
                              f"(token ids past the vocabulary)", path)
    return tok


def max_positions(model: Any) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded or unknown)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def fit_max_length(model: Any, max_length: int) -> int:
    """``max_length`` if the model's positions allow it; the default is capped, anything else refused.

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50, max_position_embeddings=64))
    >>> fit_max_length(m, 128), fit_max_length(m, 32)
    (64, 32)
    """
    limit = max_positions(model)
    if limit is None or max_length <= limit:
        return max_length
    if max_length == DEFAULT_MAX_LENGTH:  # the default is capped to a smaller model silently
        return limit
    raise LayerProbeError(f"--max-length {max_length} is past the model's {limit} positions "
                          f"(max_position_embeddings); use --max-length {limit} or less")


def check_encoded_lengths(tokenizer: Any, examples: list[dict], max_length: int) -> None:
    """Refuse encodings longer than ``max_length``: a tokenizer does not truncate below its special
    tokens (``max_length=1`` with BERT's ``[CLS] ... [SEP]``), it returns every text at full length
    with a log message, so the probe would run untruncated while its metadata said ``max_length``.

    Run on the output of ``tokenizer(texts, truncation=True, max_length=max_length)``.

    Raises:
        LayerProbeError: one line giving the special tokens and the smallest usable length.

    >>> from transformers import BertTokenizerFast
    >>> from tokenizers import Tokenizer, models, pre_tokenizers, processors
    >>> t = Tokenizer(models.WordLevel({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3}, unk_token="[UNK]"))
    >>> t.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    >>> tok = BertTokenizerFast(tokenizer_object=t, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    >>> check_encoded_lengths(tok, [{"input_ids": [1, 3, 2]}], 3)
    >>> check_encoded_lengths(tok, [{"input_ids": [1, 3, 3, 2]}], 1)
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: --max-length 1 is below what the tokenizer can produce: its special tokens take 2 of every example, and an example came out 4 tokens long; use --max-length 3 or more
    """
    longest = max((len(e["input_ids"]) for e in examples), default=0)
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    try:
        special = int(count(pair=False)) if callable(count) else None
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say: the length alone is reported
        special = None
    if longest <= max_length and (special is None or max_length > special):
        return
    if longest <= max_length and special is not None:  # only special tokens fit: every example is the same
        raise LayerProbeError(f"--max-length {max_length} leaves no room for text: the tokenizer's special tokens "
                              f"take {special} of every example; use --max-length {special + 1} or more")
    took = f"its special tokens take {special} of every example, and " if special is not None else ""
    least = special + 1 if special is not None else longest
    raise LayerProbeError(f"--max-length {max_length} is below what the tokenizer can produce: {took}an example "
                          f"came out {longest} tokens long; use --max-length {least} or more")
