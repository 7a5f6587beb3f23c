"""Resolve one side of a comparison: a snapshot, a live model, or a path on disk.

A path may be a snapshot ``.pt``, a Hugging Face model directory (run over the probe when one is
given), a ``.safetensors`` file, a sharded checkpoint or a plain state-dict ``.pt``. Everything is
read safely: :func:`load_hf_model` is the one Hugging Face loader (no remote code, ``.bin``
weights checked with the weights-only loader first); weights are read one tensor at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from layerprobe.errors import LayerProbeError
from layerprobe.io.hf_model import load_hf_model
from layerprobe.io.tokenizer import load_tokenizer
from layerprobe.model.blocks import OTHER, Blocks, blocks_from_names
from layerprobe.snapshot.take import Snapshot, take_snapshot

if TYPE_CHECKING:
    from layerprobe.io.checkpoints import TensorSource

__all__ = ["Side", "WeightTable", "check_inputs", "read_probe", "resolve_side", "side_from_snapshot"]


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
    #: the model that ran the probe and its tokenizer (a model side only; the revert test runs it)
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.meta["entries"]]


def side_from_snapshot(snap: Snapshot, label: str) -> Side:
    return Side(label, snap.meta, WeightTable.from_snapshot(snap) if snap.weights else None,
                snap.representations, snap.token_examples,
                None if snap.has_representations else f"{label} is a weights-only snapshot")


def check_inputs(*inputs: Any, probe: bool) -> None:
    """Every path input exists and is readable, and a model directory that a probe will run is a
    model directory — checked for all inputs before any model runs (a bad second input used to
    surface only after the first had been loaded and probed)."""
    from layerprobe.io.adapters import is_adapter_dir
    from layerprobe.io.files import check_exists
    from layerprobe.io.model_dir import check_model_dir, sentence_transformer_dir

    for x in inputs:
        if not isinstance(x, (str, os.PathLike)):
            continue
        path = os.fspath(x)
        check_exists(path, "input", missing="no such file or directory")
        if not os.access(path, os.R_OK):
            raise LayerProbeError("not readable (permission denied)", path)
        if os.path.isdir(path) and probe and not is_adapter_dir(path):
            path = sentence_transformer_dir(path) or path
            if os.path.lexists(os.path.join(path, "config.json")) or not _has_weight_files(path):
                check_model_dir(path, build=False, weights=False)


def _has_weight_files(path: str) -> bool:
    return any(n.endswith((".safetensors", ".bin", ".pt", ".index.json")) for n in os.listdir(path))


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
        return side_from_snapshot(x, label or "snapshot")
    if isinstance(x, nn.Module):
        if probe_texts is not None and tokenizer is None:
            raise LayerProbeError("a tokenizer is needed to run the probe through a model object")
        if block_pattern is not None or embedding_pattern is not None:
            from layerprobe.model.blocks import find_blocks
            from layerprobe.model.unwrap import unwrap

            kw["blocks"] = find_blocks(unwrap(x), blocks=block_pattern, embeddings=embedding_pattern)
        if kw.get("progress") is True and label:  # say which side / checkpoint the bar is for
            kw["progress"] = f"probe {os.path.basename(str(label).rstrip(os.sep)) or label}"
        snap = take_snapshot(x, tokenizer, list(probe_texts) if probe_texts is not None else None, **kw)
        side = side_from_snapshot(snap, label or type(x).__name__)
        side.model, side.tokenizer = x, tokenizer
        if probe_texts is None:
            side.why_no_reps = "no probe given"
        return side
    if not isinstance(x, (str, os.PathLike)):
        from layerprobe.errors import LayerProbeTypeError

        raise LayerProbeTypeError(f"{label or 'a side'}: cannot compare an object of type {type(x).__name__}; "
                                  f"expected a Snapshot, a torch.nn.Module or a path")
    from layerprobe.io.checkpoints import StateDictSource, load_pt_or_snapshot, open_checkpoint

    path = os.fspath(x)
    label = label or path
    from layerprobe.io.files import check_exists

    check_exists(path, "input", missing="no such file or directory")  # a loop or too long a name is said so
    from layerprobe.io.adapters import is_adapter_dir
    from layerprobe.io.model_dir import sentence_transformer_dir

    st_dir = sentence_transformer_dir(path)
    if st_dir is not None and st_dir != path:  # a sentence-transformers save: its transformer module
        side = resolve_side(st_dir, probe_texts, tokenizer, {**kw, "device": device, "dtype": dtype,
                                                             "block_pattern": block_pattern,
                                                             "embedding_pattern": embedding_pattern,
                                                             "adapter_base": base}, label)
        side.meta["source"] = {**side.meta.get("source", {}), "path": path, "kind": "sentence_transformers",
                               "module": os.path.relpath(st_dir, path)}
        return side

    overrides = {"block_pattern": block_pattern, "embedding_pattern": embedding_pattern}
    if os.path.isdir(path) and is_adapter_dir(path):
        side = _adapter_side(path, base, probe_texts, tokenizer, {**kw, **overrides}, label,
                                    device=device, dtype=dtype)
        _add_progress(side, path)
        return side
    if os.path.isdir(path) and probe_texts is not None:
        model, tok = load_hf_model(path, device=device, dtype=dtype)
        tok = tok or tokenizer
        if tok is None:
            raise LayerProbeError("no tokenizer in the model directory to run the probe", path)
        try:
            side = resolve_side(model, probe_texts, tok, {**kw, **overrides}, label)
        except LayerProbeError as err:  # what went wrong in the probe pass: say of which model
            raise LayerProbeError(err.message, err.path or path) from None
        side.meta["source"] = {"path": path, "kind": "hf_dir"}
        _add_progress(side, path)
        return side
    if os.path.isdir(path) and os.path.lexists(os.path.join(path, "config.json")):
        from layerprobe.io.model_dir import check_model_dir

        check_model_dir(path)  # weights only, but a config present still has to agree with the weights
    # a directory of weight shards without config.json is compared weights-only: open_checkpoint
    # checks every shard header and that the index names files inside the directory
    source: TensorSource | None = None
    if os.path.isfile(path) and not path.endswith((".safetensors", ".index.json")):  # an index: its shards
        kind, obj = load_pt_or_snapshot(path)  # loaded once, safely
        if kind == "snapshot":
            side = side_from_snapshot(Snapshot.from_dict(obj, path), label)
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
    from layerprobe.io.trainer_state import run_progress

    progress = run_progress(path)
    if progress is not None:
        side.meta["progress"] = progress


def _adapter_side(path: str, base: Any, probe_texts: Sequence[str] | None, tokenizer: Any,
                  kw: dict, label: str | None, *, device: str | None = None,
                  dtype: str | None = None) -> Side:
    """A :class:`Side` for a LoRA adapter directory over its base model (:mod:`layerprobe.io.adapters`).

    With a probe the base is loaded in the class the adapter was trained on (its ``task_type``:
    a ``SEQ_CLS`` adapter's keys are ``bert.encoder...``, not the bare encoder's ``encoder...``),
    and every adapter key must load: a missing or left-over key, or an applied update whose norm is
    not the adapter's own, is a one-line error instead of a comparison with nothing changed.
    ``modules_to_save`` (a trained head) are compared with the base's copy where it has one; a head
    the base lacks is reported in ``meta.adapter.modules_to_save`` (``in_base: false``).
    """
    import warnings

    from layerprobe.io.adapters import (
        adapter_tensors,
        base_mismatch,
        base_model_dir,
        check_adapter_loaded,
        find_key,
        load_base_for_adapter,
        lora_delta,
        lora_update_norm,
        peft_config_for,
        read_adapter_parts,
        saved_modules_info,
    )
    from layerprobe.io.checkpoints import open_checkpoint

    cfg, modules, saved = read_adapter_parts(path)
    base_dir = base_model_dir(path, cfg, base)
    label = label or path
    if not (isinstance(base, (str, os.PathLike)) and os.fspath(base) == base_dir):
        # a base named only in adapter_config.json passes the checks a base given as an input passes
        from layerprobe.io.model_dir import check_model_dir

        check_inputs(base_dir, probe=probe_texts is not None)
        if probe_texts is None and os.path.lexists(os.path.join(base_dir, "config.json")):
            check_model_dir(base_dir)  # (with a probe, load_hf_model runs it)
    table, blocks = WeightTable.from_source(open_checkpoint(base_dir))
    keys = [k for rel in table.index.values() for k in rel.values()]
    info: dict[str, Any] = {
        "kind": "lora", "base": base_dir, "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
        "task_type": cfg.get("task_type"), "modules": len(modules),
        "update_norm": math.sqrt(sum(lora_update_norm(m["A"], m["B"], m["scale"]) ** 2 for m in modules.values())),
        "modules_to_save": saved_modules_info(saved, keys, table.get)}
    mismatch = base_mismatch(path, cfg, base, base_dir)
    if mismatch is not None:  # kept in meta; compare_sides adds it to the notes and warns (once the result stands)
        info["base_note"] = mismatch
    if probe_texts is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise LayerProbeError("CKA with an adapter needs peft (pip install 'layerprobe[peft]'); "
                                  "without --probe the drift needs no peft", path) from None
        model, tok = load_base_for_adapter(base_dir, cfg, modules, saved, path, device, dtype)
        adapter_tensors(path)  # weights checked with the safe loaders before peft reads them
        config = peft_config_for(path, cfg, model, list(modules))  # no regex from the file reaches peft
        with warnings.catch_warnings():  # peft's "missing adapter keys" warning: check_adapter_loaded raises
            warnings.filterwarnings("ignore", message=".*missing adapter keys.*")
            try:
                peft_model = PeftModel.from_pretrained(model, path, is_trainable=False, config=config).eval()
            except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
                raise LayerProbeError(f"peft cannot apply the adapter to the base model: "
                                      f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", path) from None
        info["applied_update_norm"] = check_adapter_loaded(peft_model, path, info["update_norm"])
        # the adapter's own tokenizer through the one checked loader (a vocabulary past the embedding
        # table is refused in one line), else the base directory's, else the caller's
        tok = load_tokenizer(path, peft_model) or tok or tokenizer
        if tok is None:
            raise LayerProbeError("no tokenizer in the adapter or base directory to run the probe", path)
        try:
            side = resolve_side(peft_model, probe_texts, tok, kw, label)
        except LayerProbeError as err:
            raise LayerProbeError(err.message, err.path or path) from None
    else:
        fan = bool(cfg.get("fan_in_fan_out"))
        deltas: dict[str, dict[str, Any]] = {}
        for m, mod in modules.items():
            k = find_key(m + ".weight", keys)
            if k is None:
                raise LayerProbeError(f"adapter module {m!r} has no weight in the base model", path)
            deltas[k] = mod
        # peft applies fan_in_fan_out only to Conv1D weights (stored (in, out)) and turns it off for nn.Linear:
        # a rectangular adapted weight whose B·A has its shape as is says the modules are Linear
        if fan and any(len(table.shapes[k]) == 2 and table.shapes[k][0] != table.shapes[k][1]
                       and (int(m["B"].shape[0]), int(m["A"].shape[-1])) == tuple(table.shapes[k])
                       for k, m in deltas.items() if not m.get("embedding")):
            fan = False
        replaced = {k: t for name, t in saved.items() if (k := find_key(name, keys)) is not None}
        base_get = table.get

        def get(key: str) -> torch.Tensor:  # W0 + scale·B·A (or the saved module), one tensor at a time
            t = base_get(key)
            if key in replaced:
                return replaced[key].to(t.dtype)
            mod = deltas.get(key)
            return t if mod is None else (t.double() + lora_delta(mod, fan, tuple(t.shape))).to(t.dtype)

        meta = {"entries": [{"name": e.name, "kind": e.kind, "index": e.index, "modules": list(e.modules)}
                            for e in blocks], "stack": blocks.stack, "prefix": blocks.prefix}
        why = "no probe given" if probe_texts is None else "no probe"
        side = Side(label, meta, WeightTable(table.index, table.shapes, get), why_no_reps=f"{label}: {why}")
    side.meta["source"] = {"path": path, "kind": "adapter"}
    side.meta["adapter"] = info
    return side


def read_probe(
    probe: Sequence[str] | str | os.PathLike | None, text_column: str = "text", max_examples: int | None = None
) -> list[str] | None:
    """Probe texts from a list or a probe file (CSV, TSV, JSONL, TXT, datasets dir); None stays None."""
    if probe is None:
        return None
    if isinstance(probe, (str, os.PathLike)):
        from layerprobe.io.probe_files import read_probe_texts

        return read_probe_texts(probe, text_column=text_column, max_examples=max_examples)
    from layerprobe.io.probe_files import check_texts

    texts = check_texts(probe, "probe")
    return texts[:max_examples] if max_examples else texts

