"""Resolve one side of a comparison: a snapshot, a live model, or a path on disk.

A path may be a snapshot ``.pt``, a Hugging Face model directory (run over the probe when one is
given), a ``.safetensors`` file, a sharded checkpoint or a plain state-dict ``.pt``. Everything is
read safely: :func:`load_hf_model` is the one Hugging Face loader (no remote code, ``.bin``
weights checked with the weights-only loader first); weights are read one tensor at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.model.blocks import OTHER, Blocks, blocks_from_names
from layerprobe.snapshot.take import Snapshot, take_snapshot

if TYPE_CHECKING:
    from layerprobe.io.checkpoints import TensorSource

__all__ = ["DTYPES", "NOT_IN_FILES", "Side", "WeightTable", "load_hf_model", "read_probe", "resolve_device", "resolve_side"]


@dataclass
class WeightTable:
    """Where each entry's parameters are: ``index[entry][relative name] -> key`` for ``get``."""

    index: dict[str, dict[str, str]]
    shapes: dict[str, tuple]
    get: Callable[[str], torch.Tensor]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> WeightTable:
        flat = {f"{g}\0{k}": t for g, ws in snap.weights.items() for k, t in ws.items()}
        index = {g: {k: f"{g}\0{k}" for k in ws} for g, ws in snap.weights.items()}
        return cls(index, {k: tuple(t.shape) for k, t in flat.items()}, flat.__getitem__)

    @classmethod
    def from_source(cls, source: TensorSource) -> tuple[WeightTable, Blocks]:
        from layerprobe.io.model_dir import drop_non_parameters

        path = getattr(source, "path", None)
        directory = path if path and os.path.isdir(path) else None
        # align on parameters: buffers (old files' embeddings.position_ids) and tied aliases are not weights
        every = list(source.keys())
        keys, dropped = drop_non_parameters(every, {k: source.dtype(k) for k in every}, directory)
        if not every:
            raise LayerProbeError("holds no tensors, expected model weights", path)
        if not keys:
            raise LayerProbeError(f"holds no parameters to compare: its {len(dropped)} tensor(s) are integer/bool "
                                  f"or not parameters of the model (e.g. {dropped[0]!r})", path)
        try:
            blocks = blocks_from_names(keys)
        except LayerProbeError as err:  # say which file
            raise LayerProbeError(err.message, err.path or path) from None
        index: dict[str, dict[str, str]] = {}
        for k in keys:
            entry = blocks.entry_of(k)
            rel = entry.relative(blocks.canonical(k)) if entry else blocks.canonical(k)
            index.setdefault(entry.name if entry else OTHER, {})[rel] = k
        return cls(index, {k: tuple(source.shape(k)) for k in keys}, source.get), blocks


@dataclass
class Side:
    """One side of a comparison, resolved from whatever the user passed."""

    label: str
    meta: dict
    weights: WeightTable | None
    representations: dict[str, torch.Tensor] = field(default_factory=dict)
    token_examples: torch.Tensor | None = None
    why_no_reps: str | None = None

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.meta["entries"]]


def _side_from_snapshot(snap: Snapshot, label: str) -> Side:
    return Side(label, snap.meta, WeightTable.from_snapshot(snap) if snap.weights else None,
                snap.representations, snap.token_examples,
                None if snap.has_representations else f"{label} is a weights-only snapshot")


def _refuse_remote_code(path: str) -> None:
    """Refuse a model directory whose config asks for custom Python code (``auto_map``)."""
    for name in ("config.json", "tokenizer_config.json"):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            if name == "config.json":
                raise LayerProbeError("no config.json: expected a Hugging Face model directory", path)
            continue
        try:
            with open(f, "rb") as fh:
                cfg = json.loads(fh.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LayerProbeError(f"malformed JSON ({str(err).splitlines()[0]})", f) from None
        if not isinstance(cfg, dict):
            raise LayerProbeError(f"expected a JSON object, found {type(cfg).__name__}", f)
        if "auto_map" in cfg:
            raise LayerProbeError(
                "refused: 'auto_map' asks for custom Python code from the model directory "
                "(remote code is never run); use a model whose class ships with transformers", f)


def _check_bin_weights(path: str) -> None:
    """Validate ``pytorch_model.bin`` weights with the weights-only loader before transformers sees them.

    transformers 5.x also loads ``.bin`` files with ``weights_only=True``; checking first gives
    layerprobe's one-line error (suggesting safetensors) instead of a library traceback.
    """
    from layerprobe.io.checkpoints import _read_index, load_pt_or_snapshot

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
    from layerprobe.io.checkpoints import _hf_weights_file
    from layerprobe.io.files import load_json

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
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LayerProbeError("--device mps: no MPS device is available")
    if not (name.startswith("cuda") or name == "mps"):
        raise LayerProbeError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or mps")
    return name


def load_hf_model(path: str | os.PathLike, device: str | None = None,
                  dtype: str | torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model directory safely; returns ``(model in eval mode, tokenizer or None)``.

    The model is built with the class it was saved with (``config.architectures``, e.g. a
    ``BertForSequenceClassification`` keeps its head) rather than ``AutoModel``. Parameters that
    were not in the files (initialised at random by transformers) are listed in the model's
    ``_layerprobe_not_in_files`` attribute, and loading runs under a fixed seed, so the same
    directory gives the same model every time. ``device`` ("cpu", "cuda", "mps") and ``dtype``
    ("float32", "bfloat16", "float16") choose where and in which precision the model runs.

    No remote code (a config with ``auto_map`` is refused), ``.bin`` weights are checked with the
    weights-only loader first, safetensors are preferred by transformers. Every problem raises a
    one-line :class:`~layerprobe.errors.LayerProbeError` naming the directory.
    """
    path = os.fspath(path)
    import pickle

    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from layerprobe.io.files import check_model_dir
    from layerprobe.io.model_dir import architecture_class

    check_model_dir(path)  # the one guard: no custom code, known class, weights that match the config
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
        cls = architecture_class(AutoConfig.from_pretrained(path, trust_remote_code=False))
        with torch.random.fork_rng(devices=[]):  # anything not in the files is initialised the same way each time
            torch.manual_seed(0)
            model, info = cls.from_pretrained(path, trust_remote_code=False, output_loading_info=True,
                                              ignore_mismatched_sizes=True,
                                              **({"dtype": dtype} if dtype is not None else {}))
        from layerprobe.io.files import check_loading_info

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
    from layerprobe.io.files import load_tokenizer

    return model.eval(), load_tokenizer(path, model)


def resolve_side(
    x: Any,
    probe_texts: Sequence[str] | None,
    tokenizer: Any = None,
    snapshot_kwargs: dict | None = None,
    label: str | None = None,
) -> Side:
    """Turn a snapshot, model or path into a :class:`Side`, running the probe where possible."""
    kw = dict(snapshot_kwargs or {})
    device, dtype = kw.pop("device", None), kw.pop("dtype", None)
    block_pattern, embedding_pattern = kw.pop("block_pattern", None), kw.pop("embedding_pattern", None)
    base = kw.pop("adapter_base", None)
    if isinstance(x, Snapshot):
        return _side_from_snapshot(x, label or "snapshot")
    if isinstance(x, nn.Module):
        if probe_texts is not None and tokenizer is None:
            raise LayerProbeError("a tokenizer is needed to run the probe through a model object")
        if block_pattern is not None or embedding_pattern is not None:
            from layerprobe.model.blocks import find_blocks
            from layerprobe.model.unwrap import unwrap

            kw["blocks"] = find_blocks(unwrap(x), blocks=block_pattern, embeddings=embedding_pattern)
        snap = take_snapshot(x, tokenizer, list(probe_texts) if probe_texts is not None else None, **kw)
        side = _side_from_snapshot(snap, label or type(x).__name__)
        if probe_texts is None:
            side.why_no_reps = "no probe given"
        return side
    if not isinstance(x, (str, os.PathLike)):
        raise LayerProbeError(f"cannot compare an object of type {type(x).__name__}")
    from layerprobe.io.checkpoints import StateDictSource, load_pt_or_snapshot, open_checkpoint

    path = os.fspath(x)
    label = label or path
    from layerprobe.io.files import check_exists

    check_exists(path, "input", missing="no such file or directory")  # a loop or too long a name is said so
    from layerprobe.io.adapters import is_adapter_dir

    overrides = {"block_pattern": block_pattern, "embedding_pattern": embedding_pattern}
    if os.path.isdir(path) and is_adapter_dir(path):
        from layerprobe.io.adapters import resolve_adapter_side

        side = resolve_adapter_side(path, base, probe_texts, tokenizer, {**kw, **overrides}, label,
                                    device=device, dtype=dtype)
        _add_progress(side, path)
        return side
    if os.path.isdir(path) and probe_texts is not None:
        model, tok = load_hf_model(path, device=device, dtype=dtype)
        tok = tok or tokenizer
        if tok is None:
            raise LayerProbeError("no tokenizer in the model directory to run the probe", path)
        side = resolve_side(model, probe_texts, tok, {**kw, **overrides}, label)
        side.meta["source"] = {"path": path, "kind": "hf_dir"}
        _add_progress(side, path)
        return side
    if os.path.isdir(path) and os.path.lexists(os.path.join(path, "config.json")):
        from layerprobe.io.files import check_model_dir

        check_model_dir(path)  # weights only, but a config present still has to agree with the weights
    # a directory of weight shards without config.json is compared weights-only: open_checkpoint
    # checks every shard header and that the index names files inside the directory
    source: TensorSource | None = None
    if os.path.isfile(path) and not path.endswith((".safetensors", ".index.json")):  # an index: its shards
        kind, obj = load_pt_or_snapshot(path)  # loaded once, safely
        if kind == "snapshot":
            side = _side_from_snapshot(Snapshot.from_dict(obj, path), label)
            side.meta["source"] = {"path": path, "kind": "snapshot"}
            return side
        source = StateDictSource(path, tensors=obj)
    source = source or open_checkpoint(path)
    table, blocks = WeightTable.from_source(source)
    meta = {
        "entries": [{"name": e.name, "kind": e.kind, "index": e.index, "modules": list(e.modules)} for e in blocks],
        "stack": blocks.stack,
        "prefix": blocks.prefix,
        "source": {"path": path, "kind": "weights"},
    }
    why = "no probe given" if probe_texts is None else "a weights-only file has no architecture to run the probe"
    side = Side(label, meta, table, why_no_reps=f"{label}: {why}")
    _add_progress(side, path)
    return side


def _add_progress(side: Side, path: str) -> None:
    from layerprobe.comparison.series import run_progress

    progress = run_progress(path)
    if progress is not None:
        side.meta["progress"] = progress


def read_probe(
    probe: Sequence[str] | str | os.PathLike | None, text_column: str = "text", max_examples: int | None = None
) -> list[str] | None:
    """Probe texts from a list or a probe file (CSV, TSV, JSONL, TXT, datasets dir); None stays None."""
    if probe is None:
        return None
    if isinstance(probe, (str, os.PathLike)):
        from layerprobe.io.probe_files import read_probe_texts

        return read_probe_texts(probe, text_column=text_column, max_examples=max_examples)
    return list(probe)[:max_examples] if max_examples else list(probe)


#: the old private name, kept for callers that have not moved to :func:`load_hf_model`
_load_hf_dir = load_hf_model
