"""Which tensors of a checkpoint are parameters, and which architecture class a directory was saved with.

Checkpoints carry more than parameters: buffers (``embeddings.position_ids`` in files saved by
older transformers, GPT-2's causal ``attn.bias``) and, in some files, both names of a tied weight
(``lm_head.weight`` beside ``wte.weight``). Weight drift is a property of parameters, so
comparisons align on parameters:

* for a Hugging Face directory, the architecture named in ``config.json`` is built on the meta
  device (no memory, no weights) and its ``named_parameters()`` (tied aliases dropped) decide;
* for a bare file (no config), integer and bool tensors are dropped (ids and masks, never trained).

:func:`architecture_class` is the class the directory was saved with (``config.architectures``),
so a ``*ForSequenceClassification`` directory is loaded with its head rather than through
``AutoModel`` (which drops the head and randomly initialises a missing pooler).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["architecture_class", "drop_non_parameters", "parameter_names_of_dir"]


def architecture_class(config: Any) -> Any:
    """The ``transformers`` class named first in ``config.architectures``, else ``AutoModel``.

    Only classes shipped with transformers are returned (a name is looked up as an attribute of
    the ``transformers`` package; nothing is imported from the model directory).
    """
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    return transformers.AutoModel


def _meta_model(directory: str) -> torch.nn.Module | None:
    import transformers

    if not os.path.isfile(os.path.join(directory, "config.json")):
        return None
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            if "auto_map" in json.load(f):
                return None  # custom code: never built
        config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
        cls = architecture_class(config)
        with torch.device("meta"):
            return cls(config) if cls is not transformers.AutoModel else transformers.AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 - an unknown architecture falls back to the dtype rule
        return None


def parameter_names_of_dir(directory: str | os.PathLike) -> tuple[set[str], set[str]] | None:
    """``(parameter names, buffer and tied-alias names)`` of the directory's architecture, or None.

    Parameter names are those of ``named_parameters()`` (each tied weight once); the second set
    holds every buffer name and every alias of a tied parameter.
    """
    model = _meta_model(os.fspath(directory))
    if model is None:
        return None
    params = {n for n, _ in model.named_parameters()}
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - params
    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    return params, buffers | aliases


def _matches(key: str, names: Iterable[str]) -> bool:
    """``key`` names one of ``names`` up to a base-model prefix on either side."""
    for n in names:
        if key == n or key.endswith("." + n) or n.endswith("." + key):
            return True
    return False


def drop_non_parameters(keys: list[str], dtypes: dict[str, torch.dtype], directory: str | None) -> tuple[list[str], list[str]]:
    """Split checkpoint keys into ``(parameters, dropped)``.

    With a model directory the architecture decides: a key that names none of its parameters (a
    buffer, a tied alias, a stale tensor) is dropped; integer/bool tensors are dropped always.

    >>> drop_non_parameters(["embeddings.position_ids", "encoder.layer.0.w"],
    ...                     {"embeddings.position_ids": torch.int64, "encoder.layer.0.w": torch.float32}, None)
    (['encoder.layer.0.w'], ['embeddings.position_ids'])
    """
    known = parameter_names_of_dir(directory) if directory else None
    keep, dropped = [], []
    for k in keys:
        if not (dtypes[k].is_floating_point or dtypes[k].is_complex):
            dropped.append(k)
        elif known is not None and k not in known[0] and not _matches(k, known[0]):
            dropped.append(k)
        else:
            keep.append(k)
    return keep, dropped
