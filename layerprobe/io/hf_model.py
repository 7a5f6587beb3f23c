"""Load a Hugging Face model directory safely: the one loader (:func:`load_hf_model`).

Before ``transformers`` reads anything, the directory passes :func:`~layerprobe.io.model_dir.check_model_dir`
(no custom code, a class shipped with transformers, weights that match the config); ``.bin``
weights are checked with the weights-only loader and a sharded index for its ``metadata``. After
loading, :func:`check_loading_info` refuses a model whose blocks were not all in the files, and the
tokenizer comes from :func:`~layerprobe.io.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError, one_line
from layerprobe.io.checkpoints import _hf_weights_file, _read_index, load_pt_or_snapshot
from layerprobe.io.files import load_json
from layerprobe.io.model_dir import check_model_dir, model_class, unusable_attention
from layerprobe.io.tokenizer import load_tokenizer

__all__ = ["DTYPES", "NOT_IN_FILES", "check_loading_info", "load_hf_model", "resolve_device"]


def _check_bin_weights(path: str) -> None:
    """Validate ``pytorch_model.bin`` weights with the weights-only loader before transformers sees them.

    transformers 5.x also loads ``.bin`` files with ``weights_only=True``; checking first gives
    layerprobe's one-line error (suggesting safetensors) instead of a library traceback.
    """
    if any(os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "model.safetensors.index.json")):
        return
    shards = []
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        shards = ["pytorch_model.bin"]
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin.index.json")):
        shards = sorted(set(_read_index(os.path.join(path, "pytorch_model.bin.index.json")).values()))
    for shard in shards:
        kind, _ = load_pt_or_snapshot(os.path.join(path, shard))  # weights only; memory-mapped
        if kind == "snapshot":
            raise LayerProbeError("is a layerprobe snapshot, expected model weights", os.path.join(path, shard))


def _check_index_metadata(path: str) -> None:
    """transformers needs a sharded index's ``"metadata"`` object (its KeyError said only 'metadata')."""
    weights = _hf_weights_file(path)
    index = load_json(weights, "index file") if weights.endswith(".index.json") else None
    if index is not None and not isinstance(index.get("metadata") if isinstance(index, dict) else None, dict):
        raise LayerProbeError("index has no 'metadata' object, which transformers needs to load the model "
                              "(e.g. \"metadata\": {\"total_size\": N}); a weights-only comparison (no --probe) "
                              "reads it without", weights)


#: attribute set on a model loaded by :func:`load_hf_model`: parameter names that were not in the
#: files (randomly initialised by transformers); snapshots leave them out
NOT_IN_FILES = "_layerprobe_not_in_files"

#: ``--dtype`` choices
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> str:
    """``None``/"auto" -> "cpu"; "cuda"/"mps" checked for presence (one-line error if absent)."""
    if device in (None, "", "auto", "cpu"):
        return "cpu"
    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LayerProbeError(f"--device {name}: no CUDA device is available")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if index is not None and not (index.isdigit() and int(index) < torch.cuda.device_count()):
        raise LayerProbeError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LayerProbeError("--device mps: no MPS device is available")
    if not (name.startswith("cuda") or name == "mps"):
        raise LayerProbeError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or mps")
    return name


def load_hf_model(path: str | os.PathLike, device: str | None = None,
                  dtype: str | torch.dtype | None = None, *, auto_class: str | None = None,
                  num_labels: int | None = None) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model directory safely; returns ``(model in eval mode, tokenizer or None)``.

    The model is built with the class it was saved with (``config.architectures``, e.g. a
    ``BertForSequenceClassification`` keeps its head) rather than ``AutoModel``. Parameters that
    were not in the files (initialised at random by transformers) are listed in the model's
    ``_layerprobe_not_in_files`` attribute, and loading runs under a fixed seed, so the same
    directory gives the same model every time. ``device`` ("cpu", "cuda", "mps") and ``dtype``
    ("float32", "bfloat16", "float16") choose where and in which precision the model runs.
    ``auto_class`` (a transformers ``AutoModelFor...`` name) builds another class than the saved
    one, e.g. the task model a PEFT adapter was trained on, with ``num_labels`` for its head.

    No remote code (a config with ``auto_map`` is refused), ``.bin`` weights are checked with the
    weights-only loader first, safetensors are preferred by transformers. Every problem raises a
    one-line :class:`~layerprobe.errors.LayerProbeError` naming the directory.
    """
    path = os.fspath(path)
    import pickle

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    cfg = check_model_dir(path)  # the one guard: no custom code, known class, weights that match the config
    _check_bin_weights(path)
    _check_index_metadata(path)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise LayerProbeError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    dev = resolve_device(device)
    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # stderr carries only layerprobe's own progress and errors
    hf_logging.set_verbosity_error()  # no load report before (or instead of) the one-line error
    try:
        import transformers

        cls = getattr(transformers, auto_class) if auto_class is not None else \
            model_class(cfg, os.path.join(path, "config.json")) or AutoModel
        extra: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        if num_labels is not None:
            extra["num_labels"] = int(num_labels)
        if unusable_attention(cfg, os.path.join(path, "config.json")) is not None:
            extra["attn_implementation"] = None  # transformers' default (sdpa or eager), never a kernel download
        with torch.random.fork_rng(devices=[]):  # anything not in the files is initialised the same way each time
            torch.manual_seed(0)
            model, info = cls.from_pretrained(path, trust_remote_code=False, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **extra)
        check_loading_info(model, info, path)
        setattr(model, NOT_IN_FILES, frozenset(info.get("missing_keys") or ()))
        if dev != "cpu":
            model = model.to(dev)
    except LayerProbeError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        raise LayerProbeError(f"cannot load the model: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                              path) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), load_tokenizer(path, model)


def check_loading_info(model: Any, info: dict, path: str) -> None:
    """Refuse a loaded model whose block or embedding weights were not all in the files.

    ``info`` is transformers' ``output_loading_info``. Weights of the blocks and embeddings that
    were missing, had another shape (initialised at random) or were left over in the files mean
    the model measured is not the one saved. A missing task head is tolerated (it is never measured
    and snapshots leave it out).
    """
    from layerprobe.model.blocks import blocks_from_names, find_blocks

    try:
        blocks = find_blocks(model)
    except LayerProbeError:
        return
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()]
    if mismatched:
        raise LayerProbeError(f"{len(mismatched)} weight(s) in the files have another shape than the config "
                              f"implies, e.g. {one_line(str(mismatched[0]), 80)}", path)

    def in_entry(name: str) -> bool:
        return blocks.entry_of(name) is not None

    missing = sorted(k for k in info.get("missing_keys") or () if in_entry(k))
    if missing:
        raise LayerProbeError(f"{len(missing)} block/embedding weight(s) missing from the weight files (would be "
                              f"initialised at random), e.g. {one_line(missing[0], 80)}", path)
    unexpected = [k for k in info.get("unexpected_keys") or () if not k.endswith(("position_ids", ".bias_k"))]
    try:
        extra = blocks_from_names(unexpected).blocks if unexpected else []
    except LayerProbeError:
        extra = []
    if extra:
        raise LayerProbeError(f"the weight files hold block weights the model does not use, e.g. "
                              f"{one_line(unexpected[0], 80)} (config and weights disagree)", path)
