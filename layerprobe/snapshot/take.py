"""Snapshots: every entry's weights and probe representations, as plain tensors on disk.

A snapshot file is a ``torch.save``-d dict of tensors, strings, numbers, lists and dicts only, so
it loads with ``torch.load(..., weights_only=True)`` and no code from the file runs. Layout::

    {"format": "layerprobe-snapshot", "format_version": 1,
     "meta": {...},                       # version, model class, config JSON, entries, probe info
     "representations": {entry: (n, d)},  # float64 pooled (float32 rows for pooling="tokens")
     "token_examples": (n_rows,) | None,  # pooling="tokens": example index of each row
     "weights": {entry or "other": {relative param name: tensor as stored}}}

The probe fingerprint hashes the real token ids of every example (padding-free), so it does not
depend on batch size or padding side; CKA across snapshots whose fingerprints differ is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerprobe._version import __version__
from layerprobe.errors import LayerProbeError
from layerprobe.io.outputs import atomic_save_torch
from layerprobe.io.probe_files import fingerprint
from layerprobe.io.tokenizer import check_encoded_lengths
from layerprobe.model.batching import collate, encode, forward_inputs, longest_first, pad_id, pad_known
from layerprobe.model.blocks import OTHER, Blocks, find_blocks
from layerprobe.model.capture import capture
from layerprobe.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_POOLING

__all__ = ["FORMAT", "FORMAT_VERSION", "Snapshot", "describe_model", "distinct_examples", "model_weights", "run_probe",
           "take_snapshot", "tokenize_probe"]

FORMAT = "layerprobe-snapshot"
FORMAT_VERSION = 1


@dataclass
class Snapshot:
    """Weights and representations of one model on one probe set.

    Attributes:
        meta: simple metadata (see module docstring); ``meta["entries"]`` lists the entries.
        representations: ``{entry name: (n, d) tensor}``; empty for a weights-only snapshot.
        weights: ``{entry name or "other": {relative parameter name: tensor}}``.
        token_examples: with ``pooling="tokens"``, the example index of each representation row.
    """

    meta: dict
    representations: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    token_examples: torch.Tensor | None = None

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.meta["entries"]]

    def __repr__(self) -> str:
        """One line: model class, entries, examples, pooling, probe fingerprint, weights or not."""
        m = self.meta
        n_w = sum(t.numel() for ws in self.weights.values() for t in ws.values())
        reps = (f"{m.get('n_examples')} examples, pooling {m.get('pooling')}, probe {str(self.fingerprint)[:12]}"
                if self.representations else "no representations")
        return (f"Snapshot({m.get('model_class')}, {len(self.names)} entries, {reps}, "
                f"{f'{n_w:,} weights' if self.weights else 'no weights'})")

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("probe_fingerprint")

    @property
    def has_representations(self) -> bool:
        return bool(self.representations)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "representations": self.representations,
            "token_examples": self.token_examples,
            "weights": self.weights,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write the snapshot atomically (no half-written file on failure); returns the path."""
        return atomic_save_torch(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Snapshot:
        """Load a snapshot file safely (``weights_only=True``) and validate its layout."""
        from layerprobe.io.checkpoints import safe_torch_load

        return cls.from_dict(safe_torch_load(path), path)

    @classmethod
    def from_dict(cls, obj: Any, path: str | os.PathLike | None = None) -> Snapshot:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise LayerProbeError("not a layerprobe snapshot (no 'format': 'layerprobe-snapshot')", path)
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise LayerProbeError(
                f"snapshot format version {version!r} is not supported (this layerprobe reads <= {FORMAT_VERSION})",
                path,
            )
        from layerprobe.snapshot.check import check_snapshot

        check_snapshot(obj, path)  # the full schema: types, ranges, every entry's representation
        meta, reps, weights = obj.get("meta"), obj.get("representations"), obj.get("weights")
        if not isinstance(meta, dict) or not isinstance(meta.get("entries"), list):
            raise LayerProbeError("snapshot has no valid 'meta' with 'entries'", path)
        if not isinstance(reps, dict) or not isinstance(weights, dict):
            raise LayerProbeError("snapshot lacks 'representations' or 'weights' dicts", path)
        names = [e.get("name") for e in meta["entries"]]
        sizes = set()
        for name, rep in reps.items():
            if name not in names or not torch.is_tensor(rep) or rep.dim() != 2:
                raise LayerProbeError(f"snapshot representation {name!r} is not a 2-D tensor of a known entry", path)
            sizes.add(rep.shape[0])
        if len(sizes) > 1:
            raise LayerProbeError(f"snapshot representations have different row counts {sorted(sizes)}", path)
        for name, group in weights.items():
            if name not in names and name != OTHER:
                raise LayerProbeError(f"snapshot weights for unknown entry {name!r}", path)
            if not isinstance(group, dict) or not all(torch.is_tensor(t) for t in group.values()):
                raise LayerProbeError(f"snapshot weights of {name!r} are not a dict of tensors", path)
        return cls(meta=meta, representations=reps, weights=weights, token_examples=obj.get("token_examples"))


def _config_json(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return "{}"
    try:
        return json.dumps(config.to_dict(), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return "{}"


def model_weights(model: nn.Module, blocks: Blocks) -> dict[str, dict[str, torch.Tensor]]:
    """Copy every parameter to CPU, grouped by entry and named relative to it.

    Wrappers are seen through (:func:`~layerprobe.model.unwrap.effective_parameters`: a LoRA weight is
    base + update, an FSDP2 shard is gathered); parameters that a loader initialised because they
    were not in the files (:data:`~layerprobe.io.hf_model.NOT_IN_FILES`) are left out.
    """
    from layerprobe.model.unwrap import effective_parameters

    not_in_files: frozenset[str] = getattr(model, "_layerprobe_not_in_files", frozenset())
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in effective_parameters(model):
        if name in not_in_files:
            continue
        entry = blocks.entry_of(name)
        key = entry.relative(blocks.canonical(name)) if entry else blocks.canonical(name)
        out.setdefault(entry.name if entry else OTHER, {})[key] = p.detach().to("cpu", copy=True)
    return out


def _dtype_name(model: nn.Module) -> str | None:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return str(p.dtype).replace("torch.", "") if p is not None else None


def describe_model(model: nn.Module, blocks: Blocks) -> dict:
    """Simple metadata about a model and its entries (JSON-friendly)."""
    from layerprobe.model.unwrap import input_device

    return {
        "device": str(input_device(model)),
        "dtype": _dtype_name(model),
        "layerprobe_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model_class": type(model).__name__,
        "config_json": _config_json(model),
        "stack": blocks.stack,
        "prefix": blocks.prefix,
        "entries": [
            {"name": e.name, "kind": e.kind, "index": e.index, "modules": list(e.modules)} for e in blocks
        ],
    }


def tokenize_probe(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[dict], str]:
    """Tokenize each text once (no padding); returns per-example encodings and the fingerprint."""
    if not texts:
        raise LayerProbeError("the probe set is empty")
    examples = encode(tokenizer, texts, max_length)
    check_encoded_lengths(tokenizer, examples, max_length)  # a tokenizer that could not truncate that far
    lengths = np.array([len(e["input_ids"]) for e in examples])
    ids = np.zeros((len(examples), int(lengths.max())), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, : lengths[i]] = e["input_ids"]
        mask[i, : lengths[i]] = e.get("attention_mask", [1] * lengths[i])
    return examples, fingerprint(ids, mask)


def distinct_examples(examples: list[dict]) -> int:
    """How many examples differ in their token ids (duplicate texts, and texts that differ only past
    ``max_length`` or in what the tokenizer normalises away, count once).

    >>> distinct_examples([{"input_ids": [1, 2]}, {"input_ids": [1, 2]}, {"input_ids": [1, 3]}])
    2
    """
    return len({tuple(int(i) for i in e["input_ids"]) for e in examples})


def run_probe(
    model: nn.Module,
    examples: list[dict],
    blocks: Blocks,
    pooling: str = DEFAULT_POOLING,
    max_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pad: int = 0,
    progress: bool | str = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass per batch over the tokenized probe, every entry captured at once.

    Examples are batched by length (less padding, faster), and representations are returned
    in the original example order.
    """
    from layerprobe.model.unwrap import input_device

    device = input_device(model)  # offloaded (meta) parameters: inputs start on the CPU
    order = longest_first(examples)
    with capture(model, blocks, pooling=pooling, max_tokens=max_tokens) as cap, pad_known(model, pad):
        # the bar stays and ends its line (a cleared bar left "\r" and glued the next stderr line on), also
        # when a forward pass raises: closed by ``with`` before the error is printed, not when the traceback
        # is freed; a string names what is probed ("probe checkpoint-500")
        with tqdm(range(0, len(order), batch_size), desc=progress if isinstance(progress, str) else "probe",
                  unit="batch", disable=not progress, leave=True) as bar:
            for start in bar:
                batch = collate([examples[i] for i in order[start : start + batch_size]], pad, device)
                model(**forward_inputs(model, batch))
    outputs = cap.outputs
    # blocks first: the embeddings' representation is read where the first block takes it
    missing = sorted((e for e in blocks if e.name not in outputs), key=lambda e: e.kind != "block")
    if missing and order:
        e = missing[0]
        more = f" (and {len(missing) - 1} more entries)" if len(missing) > 1 else ""
        raise LayerProbeError(
            f"{type(model).__name__}: entry {e.name} ({', '.join(e.modules)}){more} was never called in a forward "
            "pass: its module is a container or off the forward path, so it has no representation; pass "
            "blocks='<pattern>' naming the layers that run")
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    if pooling != "tokens":
        return {k: v[inverse] for k, v in outputs.items()}, None
    # rows are grouped by sorted position; map to original example ids and sort stably
    original = torch.tensor(order)[cap.token_examples]
    perm = torch.sort(original, stable=True).indices
    return {k: v[perm] for k, v in outputs.items()}, original[perm]


def take_snapshot(
    model: nn.Module,
    tokenizer: Any = None,
    texts: list[str] | None = None,
    *,
    pooling: str = DEFAULT_POOLING,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    blocks: Blocks | None = None,
    with_weights: bool = True,
    progress: bool | str = True,
) -> Snapshot:
    """Snapshot a model's weights and, given a probe, every entry's representations.

    Args:
        model: a Hugging Face model (bare or with a task head); its train/eval mode is kept.
        tokenizer: the model's tokenizer (needed with ``texts``).
        texts: the probe sentences; None for a weights-only snapshot.
        pooling: ``"mean"`` (default), ``"first"``, ``"last"`` or ``"tokens"``.
        max_length: truncation length in tokens.
        max_tokens: per-example token cap with ``pooling="tokens"``.
        batch_size: examples per forward pass.
        blocks: entries (found with :func:`find_blocks` if None).
        with_weights: copy the weights too (default True).
        progress: show a progress bar; a string is its label (e.g. ``"probe checkpoint-500"``).

    Returns:
        :class:`Snapshot` with ``(n, d)`` representations per entry.

    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                          intermediate_size=20, vocab_size=50))
    >>> s = take_snapshot(m, with_weights=True)  # weights only
    >>> s.names, s.has_representations
    (['embeddings', 'block.0', 'block.1'], False)
    """
    from layerprobe.errors import LayerProbeTypeError
    from layerprobe.io.probe_files import check_texts
    from layerprobe.model.unwrap import has_meta_parameters, unwrap
    from layerprobe.options import ProbeOptions

    if not isinstance(model, nn.Module):
        raise LayerProbeTypeError(f"model must be a torch.nn.Module, got {type(model).__name__} (a path? use "
                                  f"compare() or the CLI, which load model directories)")
    ProbeOptions(pooling=pooling, max_length=max_length, max_tokens=max_tokens, batch_size=batch_size)  # refuses
    if texts is not None:
        texts = check_texts(texts)
        if tokenizer is not None and any(True for _ in model.parameters()) and \
                all(p.is_meta for p in model.parameters()):
            raise LayerProbeError("the model's parameters are all on the meta device (no data): it cannot run "
                                  "the probe texts; load its weights, or pass texts=None for a weights-free snapshot")
    model = unwrap(model)  # DDP, FSDP, torch.compile, PEFT: the names of the plain model
    blocks = blocks if blocks is not None else find_blocks(model)
    meta = describe_model(model, blocks)
    if with_weights and has_meta_parameters(model):  # device_map offload: no weight data here
        with_weights = False
        meta["weights_missing"] = ("parameters offloaded (meta tensors): representation-only snapshot; "
                                   "give the weight files to compare for drift")
    reps: dict[str, torch.Tensor] = {}
    token_examples = None
    if texts is not None:
        if tokenizer is None:
            raise LayerProbeError("a tokenizer is needed to run the probe texts")
        from layerprobe.io.tokenizer import fit_max_length

        fitted = fit_max_length(model, max_length)  # an explicit length past the positions is refused
        examples, fp = tokenize_probe(tokenizer, texts, max_length)
        if fitted < max_length and max(len(e["input_ids"]) for e in examples) > fitted:
            max_length = fitted  # the default, capped to the model's positions where the probe needs it
            examples, fp = tokenize_probe(tokenizer, texts, max_length)
        reps, token_examples = run_probe(
            model, examples, blocks, pooling, max_tokens, batch_size, pad_id(tokenizer), progress
        )
        from layerprobe.snapshot.check import representation_problem

        for name, r in reps.items():  # the check compare makes, so no snapshot holds what compare refuses
            why = representation_problem(r, constant=False)
            if why:
                raise LayerProbeError(f"{why} in {name}: the activations overflow or the weights are broken "
                                      "(in float16, try --dtype float32)")
        meta.update(
            probe_fingerprint=fp,
            n_examples=len(texts),
            n_distinct_examples=distinct_examples(examples),
            pooling=pooling,
            max_length=max_length,
            max_tokens=max_tokens,
            n_tokens=int(sum(len(e["input_ids"]) for e in examples)),
        )
    weights = model_weights(model, blocks) if with_weights else {}
    meta["param_shapes"] = {g: {k: list(t.shape) for k, t in ws.items()} for g, ws in weights.items()}
    if not weights:  # shapes need no data (meta tensors have them): parameter counts stay known
        for name, p in model.named_parameters():
            entry = blocks.entry_of(name)
            key = entry.relative(blocks.canonical(name)) if entry else blocks.canonical(name)
            meta["param_shapes"].setdefault(entry.name if entry else OTHER, {})[key] = list(p.shape)
    return Snapshot(meta=meta, representations=reps, weights=weights, token_examples=token_examples)
