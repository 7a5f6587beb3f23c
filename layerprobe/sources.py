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

from .blocks import OTHER, Blocks, blocks_from_names
from .errors import LayerProbeError
from .snapshot import Snapshot, take_snapshot

if TYPE_CHECKING:
    from .checkpoints import TensorSource

__all__ = ["Side", "WeightTable", "load_hf_model", "read_probe", "resolve_side"]


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
        keys = list(source.keys())
        blocks = blocks_from_names(keys)
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
    from .checkpoints import _read_index, load_pt_or_snapshot

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


def load_hf_model(path: str | os.PathLike) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model directory safely; returns ``(model in eval mode, tokenizer or None)``.

    No remote code (a config with ``auto_map`` is refused), ``.bin`` weights are checked with the
    weights-only loader first, safetensors are preferred by transformers. Every problem raises a
    one-line :class:`~layerprobe.errors.LayerProbeError` naming the directory.
    """
    path = os.fspath(path)
    import pickle

    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _refuse_remote_code(path)
    _check_bin_weights(path)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr carries only layerprobe's own progress and errors
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as err:
        raise LayerProbeError(f"cannot load the model: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                              path) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError):
        tokenizer = None
    return model.eval(), tokenizer


def resolve_side(
    x: Any,
    probe_texts: Sequence[str] | None,
    tokenizer: Any = None,
    snapshot_kwargs: dict | None = None,
    label: str | None = None,
) -> Side:
    """Turn a snapshot, model or path into a :class:`Side`, running the probe where possible."""
    kw = dict(snapshot_kwargs or {})
    if isinstance(x, Snapshot):
        return _side_from_snapshot(x, label or "snapshot")
    if isinstance(x, nn.Module):
        if probe_texts is not None and tokenizer is None:
            raise LayerProbeError("a tokenizer is needed to run the probe through a model object")
        snap = take_snapshot(x, tokenizer, list(probe_texts) if probe_texts is not None else None, **kw)
        side = _side_from_snapshot(snap, label or type(x).__name__)
        if probe_texts is None:
            side.why_no_reps = "no probe given"
        return side
    if not isinstance(x, (str, os.PathLike)):
        raise LayerProbeError(f"cannot compare an object of type {type(x).__name__}")
    from .checkpoints import StateDictSource, load_pt_or_snapshot, open_checkpoint

    path = os.fspath(x)
    label = label or path
    if not os.path.exists(path):
        raise LayerProbeError("no such file or directory", path)
    if os.path.isdir(path) and probe_texts is not None:
        model, tok = load_hf_model(path)
        tok = tok or tokenizer
        if tok is None:
            raise LayerProbeError("no tokenizer in the model directory to run the probe", path)
        side = resolve_side(model, probe_texts, tok, kw, label)
        side.meta["source"] = {"path": path, "kind": "hf_dir"}
        return side
    source: TensorSource | None = None
    if os.path.isfile(path) and not path.endswith(".safetensors"):
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
    return Side(label, meta, table, why_no_reps=f"{label}: {why}")


def read_probe(
    probe: Sequence[str] | str | os.PathLike | None, text_column: str = "text", max_examples: int | None = None
) -> list[str] | None:
    """Probe texts from a list or a probe file (CSV, TSV, JSONL, TXT, datasets dir); None stays None."""
    if probe is None:
        return None
    if isinstance(probe, (str, os.PathLike)):
        from .probe import read_probe_texts

        return read_probe_texts(probe, text_column=text_column, max_examples=max_examples)
    return list(probe)[:max_examples] if max_examples else list(probe)


#: the old private name, kept for callers that have not moved to :func:`load_hf_model`
_load_hf_dir = load_hf_model
