"""Read model weights from disk safely and lazily.

Rule zero: no code from a file ever runs. PyTorch files are read with
``torch.load(..., weights_only=True)`` only (memory-mapped where the format allows), safetensors
files with :func:`safetensors.safe_open`; nothing is unpickled any other way and no remote code is
trusted.

What can be opened (:func:`open_checkpoint`, :func:`checkpoint_kind`):

* ``"safetensors"`` — one ``.safetensors`` file, read one tensor at a time.
* ``"hf_dir"`` — a Hugging Face model directory (or its ``*.index.json``) with ``model.safetensors``, a sharded
  ``model.safetensors.index.json`` + shards, ``pytorch_model.bin`` or a sharded
  ``pytorch_model.bin.index.json`` + shards (safetensors preferred when both exist). Shards are
  opened only when one of their tensors is asked for; at most one ``.bin`` shard is held at a time.
* ``"state_dict"`` — a ``.pt`` / ``.bin`` / ``.pth`` file holding a dict name → tensor, or a dict
  whose ``"state_dict"`` or ``"model"`` entry is such a dict (training checkpoints).
* ``"snapshot"`` — a layerprobe snapshot (a ``.pt`` dict with ``"format": "layerprobe-snapshot"``);
  detected here (:func:`load_pt_or_snapshot`), read elsewhere.

Every problem with a file raises a one-line :class:`~layerprobe.errors.LayerProbeError` that
names the file, says what was found and what was expected.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from layerprobe.errors import LayerProbeError
from layerprobe.errors import one_line as _one_line
from layerprobe.io.torch_files import (  # noqa: F401  (safe_torch_load, load_pt_or_snapshot: public here too)
    SNAPSHOT_FORMAT,
    _check_file,
    _sniff,
    load_pt_or_snapshot,
    safe_torch_load,
)

__all__ = [
    "SNAPSHOT_FORMAT",
    "SafetensorsSource",
    "ShardedSource",
    "StateDictSource",
    "TensorSource",
    "check_finite",
    "checkpoint_kind",
    "load_pt_or_snapshot",
    "open_checkpoint",
    "safe_torch_load",
]

_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_NO_WEIGHTS = (
    "no model weights found (expected model.safetensors, model.safetensors.index.json, "
    "pytorch_model.bin)"
)


# --------------------------------------------------------------------------- tensor sources


class TensorSource(abc.ABC):
    """Read-only, lazy view of the named tensors of one checkpoint.

    ``keys()`` lists names in a stable file order; ``shape``/``dtype``/``nbytes`` never read
    tensor data; ``get`` reads exactly one tensor (CPU, dtype as stored). Use as a context
    manager or call :meth:`close`.
    """

    path: str
    kind: str
    #: ``get(name, out=buf)`` reads the tensor from a file into ``buf`` (see :meth:`get`).
    fills_out: bool = False

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """Tensor names in stable file order."""

    @abc.abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (no data read)."""

    @abc.abstractmethod
    def dtype(self, name: str) -> torch.dtype:
        """dtype of tensor ``name`` as stored (no data read)."""

    @abc.abstractmethod
    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name`` on CPU, as stored. With ``out`` (1-D uint8, ≥ ``nbytes(name)``) a source
        that reads from a file (:attr:`fills_out`) reads into it and returns a view of it."""

    def nbytes(self, name: str) -> int:
        """Size of tensor ``name`` in bytes (no data read)."""
        numel = 1
        for d in self.shape(name):
            numel *= d
        return numel * self.dtype(name).itemsize

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` for every tensor, in ``keys()`` order."""
        return {k: self.shape(k) for k in self.keys()}

    def close(self) -> None:  # noqa: B027  (optional: sources without open files keep this no-op)
        """Release open files; the source is unusable afterwards."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, name: object) -> bool:
        return name in self._key_set()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, kind={self.kind!r}, tensors={len(self)})"

    def _key_set(self) -> frozenset[str]:
        cached = getattr(self, "_keys_cache", None)
        if cached is None:
            cached = frozenset(self.keys())
            self._keys_cache = cached
        return cached

    def _missing(self, name: str) -> LayerProbeError:
        return LayerProbeError(
            f"no tensor named {name!r} ({len(self)} tensors in this checkpoint)", path=self.path
        )


_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
}


class _SafetensorsFile:
    """One ``.safetensors`` file opened lazily with ``safe_open`` (validated on open)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        _check_file(path, "safetensors file")
        _check_header_count(path)  # more than MAX_TENSORS entries: refused before the header is parsed
        try:
            handle = safe_open(path, framework="pt", device="cpu")
            handle.__enter__()
            keys = list(handle.offset_keys())
            meta = {}
            for k in keys:
                sl = handle.get_slice(k)
                st_dtype = sl.get_dtype()
                if st_dtype not in _ST_DTYPES:
                    raise LayerProbeError(
                        f"tensor {k!r} has unsupported dtype {st_dtype}, expected one of "
                        f"{', '.join(_ST_DTYPES)}",
                        path=path,
                    )
                if _ST_DTYPES[st_dtype].is_complex:
                    raise LayerProbeError(f"tensor {k!r} has complex dtype {st_dtype}, expected real "
                                          "floating-point weights", path=path)
                meta[k] = (tuple(int(d) for d in sl.get_shape()), _ST_DTYPES[st_dtype])
        except LayerProbeError:
            raise
        except Exception as exc:  # SafetensorError and friends
            reason = _one_line(exc, 120).replace("Error while deserializing header: ", "")
            raise LayerProbeError(
                f"not a readable safetensors file: corrupted header or data ({reason})", path=path
            ) from None
        self.path = path
        self._handle: Any = handle
        self.keys = keys
        self.meta = meta
        from layerprobe.io.files import unique_keys

        with open(path, "rb") as f:  # ``{name: (absolute start, end)}``; the header is read once more here, as
            n = int.from_bytes(f.read(8), "little")  # safe_open keeps one of two same-named entries silently
            try:
                header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=unique_keys(
                    path, "not a readable safetensors file: the header names tensor"))
            except LayerProbeError:
                self.close()
                raise
        self._offsets = {k: (8 + n + int(v["data_offsets"][0]), 8 + n + int(v["data_offsets"][1]))
                         for k, v in header.items() if k != "__metadata__"}

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        if self._handle is None:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        try:
            # A plain positioned read into a buffer, not safe_open's memory map: the pages of a read
            # tensor do not stay mapped, so a streamed comparison holds only the tensors it is using.
            shape, dtype = self.meta[name]
            start, end = self._offsets[name]
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * dtype.itemsize
            if end - start != nbytes:
                raise ValueError(f"{end - start} bytes for shape {shape} and dtype {dtype}")
            if out is not None and numel:  # reused by a stream: a view of its first bytes
                if out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous() or out.numel() < nbytes:
                    raise ValueError(f"out must be 1-D contiguous uint8 of >= {nbytes} bytes, got {out.dtype} {tuple(out.shape)}")
            out = torch.empty(shape, dtype=dtype) if out is None or not numel else out[:nbytes].view(dtype).view(shape)
            if numel:
                buf = memoryview(out.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
                with open(self.path, "rb", buffering=0) as f:
                    f.seek(start)
                    got = 0
                    while got < len(buf):
                        k = f.readinto(buf[got:])
                        if not k:
                            raise ValueError("unexpected end of file")
                        got += k
            return out
        except Exception as exc:
            raise LayerProbeError(
                f"cannot read tensor {name!r} ({_one_line(exc, 120)})", path=self.path
            ) from None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None


#: safetensors' own limit on the header (its reader refuses larger ones)
_MAX_HEADER_BYTES = 100_000_000


def _check_header_count(path: str) -> None:
    """Refuse a ``.safetensors`` whose header lists more than :data:`MAX_TENSORS` tensors.

    Every tensor entry has one ``"data_offsets"`` key, so counting that byte string in the raw
    header (a C-speed scan of at most 100 MB) bounds the count before any JSON is parsed or any
    tensor is looked at; a malformed header is left to the reader's own message."""
    from layerprobe.io.torch_files import MAX_TENSORS

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER_BYTES:
            return  # the reader refuses it ("header too large")
        count = f.read(n).count(b'"data_offsets"')
    if count > MAX_TENSORS:
        raise LayerProbeError(f"holds {count:,} tensors (counted in its header before reading), more than the "
                              f"{MAX_TENSORS:,} accepted in one checkpoint file; save the weights in shards "
                              "(model.safetensors.index.json)", path=path)


class SafetensorsSource(TensorSource):
    """A single ``.safetensors`` file; tensors are read one at a time."""

    kind = "safetensors"
    fills_out = True

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = _SafetensorsFile(self.path)

    def keys(self) -> list[str]:
        return list(self._file.keys)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._file.meta:
            raise self._missing(name)
        return self._file.meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        if name not in self._file.meta:
            raise self._missing(name)
        return self._file.meta[name][1]

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        if name not in self._file.meta:
            raise self._missing(name)
        return self._file.get(name, out)

    def close(self) -> None:
        self._file.close()


class StateDictSource(TensorSource):
    """A ``torch.save`` state dict (memory-mapped when the file is in the zip format)."""

    kind = "state_dict"

    def __init__(self, path: str | os.PathLike, tensors: Mapping[str, torch.Tensor] | None = None):
        self.path = os.fspath(path)
        if tensors is None:
            kind, obj = load_pt_or_snapshot(self.path)
            if kind == "snapshot":
                raise LayerProbeError(
                    "is a layerprobe snapshot, not model weights; expected a state dict", path=self.path
                )
            tensors = obj
        self._tensors: dict[str, torch.Tensor] | None = dict(tensors)

    def _t(self, name: str) -> torch.Tensor:
        if self._tensors is None:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        if name not in self._tensors:
            raise self._missing(name)
        return self._tensors[name]

    def keys(self) -> list[str]:
        if self._tensors is None:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t(name).dtype

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        return self._t(name)  # already in memory (or memory-mapped): ``out`` is not needed

    def close(self) -> None:
        self._tensors = None


class ShardedSource(TensorSource):
    """A Hugging Face directory: one weights file or an index + shards, opened lazily."""

    kind = "hf_dir"

    def __init__(self, path: str | os.PathLike, weights_file: str | None = None):
        self.path = os.fspath(path)
        weights = weights_file or _hf_weights_file(self.path)
        self.weights_file = weights
        self._safetensors = weights.endswith((".safetensors", ".safetensors.index.json"))
        self.fills_out = self._safetensors
        self._closed = False
        self._open: dict[str, Any] = {}  # shard file -> open _SafetensorsFile / tensor dict
        if weights.endswith(".index.json"):
            self._weight_map = _read_index(weights)
            shards = dict.fromkeys(self._weight_map.values())
            for shard in shards:
                shard_path = os.path.join(self.path, shard)
                if not os.path.isfile(shard_path):
                    raise LayerProbeError(
                        f"shard {shard!r} listed in {os.path.basename(weights)} is missing", path=shard_path
                    )
        else:
            name = os.path.basename(weights)
            if self._safetensors:
                opened = _SafetensorsFile(weights)
                self._open[name] = opened
                keys = opened.keys
            else:
                tensors = _load_bin_shard(weights)
                self._open[name] = tensors
                keys = list(tensors)
            self._weight_map = dict.fromkeys(keys, name)

    def _shard(self, name: str) -> tuple[str, Any]:
        shard = self._weight_map.get(name)
        if self._closed:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        if shard is None:
            raise self._missing(name)
        opened = self._open.get(shard)
        if opened is None:
            shard_path = os.path.join(self.path, shard)
            if self._safetensors:
                opened = _SafetensorsFile(shard_path)
            else:
                # Hold at most one .bin shard: a sharded checkpoint is never all in memory.
                self._open.clear()
                opened = _load_bin_shard(shard_path)
            self._open[shard] = opened
        return shard, opened

    def _lookup(self, name: str) -> tuple[str, Any]:
        shard, opened = self._shard(name)
        present = name in (opened.meta if self._safetensors else opened)
        if not present:
            raise LayerProbeError(
                f"tensor {name!r} is listed in {os.path.basename(self.weights_file)} but missing "
                f"from shard {shard!r}",
                path=os.path.join(self.path, shard),
            )
        return shard, opened

    def keys(self) -> list[str]:
        if self._closed:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        return list(self._weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        _, opened = self._lookup(name)
        return opened.meta[name][0] if self._safetensors else tuple(opened[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        _, opened = self._lookup(name)
        return opened.meta[name][1] if self._safetensors else opened[name].dtype

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        _, opened = self._lookup(name)
        return opened.get(name, out) if self._safetensors else opened[name]

    def close(self) -> None:
        for opened in self._open.values():
            if isinstance(opened, _SafetensorsFile):
                opened.close()
        self._open.clear()
        self._closed = True


def _load_bin_shard(path: str) -> dict[str, torch.Tensor]:
    _check_file(path, "weights file")
    kind, obj = load_pt_or_snapshot(path)
    if kind == "snapshot":
        raise LayerProbeError("is a layerprobe snapshot, expected model weights", path=path)
    return obj


def _read_index(path: str) -> dict[str, str]:
    from layerprobe.io.files import load_json

    _check_file(path, "index file")
    index = load_json(path, "index file")  # bounded; deep nesting, NaN and bad UTF-8 are one line
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LayerProbeError(
            "index has no 'weight_map', expected {\"weight_map\": {tensor name: shard file}}", path=path
        )
    for name, shard in weight_map.items():
        if (not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", "..")
                or shard.endswith(".json")):  # never the index itself (or another index)
            raise LayerProbeError(
                f"weight_map entry {name!r} -> {shard!r} is not a shard file name in this directory",
                path=path,
            )
    return weight_map


def _hf_weights_file(directory: str) -> str:
    for name in _HF_WEIGHT_FILES:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise LayerProbeError(_NO_WEIGHTS, path=directory)


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"snapshot"``, ``"safetensors"``, ``"hf_dir"`` or ``"state_dict"``.

    A directory is ``"hf_dir"`` (it must hold a weights file); a file is classified by its
    bytes (safetensors header, torch zip / pickle), and a torch file is loaded (weights only,
    memory-mapped) to tell a layerprobe snapshot from a state dict. To avoid loading the file
    twice, use :func:`load_pt_or_snapshot` directly.

    Raises:
        LayerProbeError: missing path, directory without weights, or not a checkpoint.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        _hf_weights_file(path)
        return "hf_dir"
    _check_file(path)
    if _sniff(path) == "safetensors":
        return "safetensors"
    kind, _ = load_pt_or_snapshot(path)
    return kind


def open_checkpoint(path: str | os.PathLike) -> TensorSource:
    """Open model weights lazily, whatever their layout (see the module docstring).

    Args:
        path: a ``.safetensors`` file, a Hugging Face model directory, or a ``torch.save``
            state-dict file.

    Returns:
        A :class:`TensorSource`; close it (or use ``with``) when done.

    Raises:
        LayerProbeError: the path is missing, holds no weights, is corrupted or unsafe, is a
            layerprobe snapshot rather than weights, or holds non-tensor values.

    >>> import tempfile, os
    >>> from safetensors.torch import save_file
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"layer.0.weight": torch.eye(2)}, p)
    >>> with open_checkpoint(p) as src:
    ...     src.kind, src.keys(), src.shape("layer.0.weight"), src.get("layer.0.weight").sum().item()
    ('safetensors', ['layer.0.weight'], (2, 2), 2.0)
    """
    path = os.fspath(path)
    from layerprobe.io.files import check_exists

    check_exists(path, "checkpoint")
    if os.path.isdir(path):
        return ShardedSource(path)
    if path.endswith(".index.json"):  # the index of a sharded directory, named directly
        return ShardedSource(os.path.dirname(os.path.abspath(path)), weights_file=path)
    _check_file(path)
    if _sniff(path) == "safetensors" or path.endswith(".safetensors"):
        return SafetensorsSource(path)
    return StateDictSource(path)


# --------------------------------------------------------------------------- value checks


#: Elements checked for NaN/Inf at a time (the bool mask never covers a whole huge tensor).
_FINITE_CHUNK = 1 << 24


def check_finite(name: str, tensor: torch.Tensor, path: str | os.PathLike | None = None) -> None:
    """Raise if a floating-point tensor holds NaN or Inf (checked in chunks; counted only on failure).

    Raises:
        LayerProbeError: ``"non-finite values (NaN/Inf) in parameter 'x': 2 of 6 values (1 NaN, 1 Inf)"``.

    >>> check_finite("w", torch.ones(3))
    >>> check_finite("w", torch.tensor([1.0, float("nan")]), "m.pt")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: m.pt: non-finite values (NaN/Inf) in parameter 'w': 1 of 2 values (1 NaN, 0 Inf)
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    flat = tensor.reshape(-1)
    chunks = [flat[i:i + _FINITE_CHUNK] for i in range(0, flat.numel(), _FINITE_CHUNK)]  # views, no copies
    if all(bool(torch.isfinite(c).all()) for c in chunks):
        return
    n_nan = sum(int(torch.isnan(c).sum()) for c in chunks)
    n_bad = sum(int((~torch.isfinite(c)).sum()) for c in chunks)
    raise LayerProbeError(
        f"non-finite values (NaN/Inf) in parameter {name!r}: {n_bad} of {tensor.numel()} values "
        f"({n_nan} NaN, {n_bad - n_nan} Inf)",
        path=path,
    )
