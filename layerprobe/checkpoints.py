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
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from layerprobe.errors import LayerProbeError

__all__ = [
    "HEAD_MODULES",
    "SNAPSHOT_FORMAT",
    "Alignment",
    "SafetensorsSource",
    "ShardedSource",
    "StateDictSource",
    "TensorSource",
    "align_names",
    "check_finite",
    "checkpoint_kind",
    "load_pt_or_snapshot",
    "match_sources",
    "match_state",
    "open_checkpoint",
    "safe_torch_load",
    "strip_common_prefix",
]

SNAPSHOT_FORMAT = "layerprobe-snapshot"

#: First name component (after any model prefix such as ``bert.``) of task-head parameters:
#: present in a task model and absent from the bare encoder, so never a mismatch.
HEAD_MODULES = frozenset(
    {
        "classifier", "pre_classifier", "pooler", "lm_head", "cls", "qa_outputs", "score",
        "vocab_transform", "vocab_layer_norm", "vocab_projector", "generator_lm_head",
        "discriminator_predictions", "sequence_summary", "lm_loss", "heads", "head",
    }
)

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
_UNSAFE = (
    "refused: the file needs arbitrary Python objects to load (unsafe pickle); "
    "convert it to .safetensors"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(_ANSI.sub("", str(text)).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")


# --------------------------------------------------------------------------- raw file access


def _sniff(path: str) -> str:
    """What the bytes of ``path`` look like: safetensors, torch_zip, pickle, empty or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _check_file(path: str, what: str = "file") -> None:
    if not os.path.exists(path):
        raise LayerProbeError(f"{what} not found", path=path)
    if os.path.isdir(path):
        raise LayerProbeError(f"is a directory, expected a {what}", path=path)
    if not os.access(path, os.R_OK):
        raise LayerProbeError("cannot read: permission denied", path=path)
    if os.path.getsize(path) == 0:
        raise LayerProbeError(f"{what} is empty (0 bytes), expected a checkpoint", path=path)


def _global_status(dotted: str) -> str:
    """``"real"``, ``"missing"`` or ``"unknown"`` for a ``module.attr`` name from a pickle.

    Looks only at *already imported* modules: a module named by a file must never be imported
    on the file's behalf. ``"missing"``: the module is loaded but has no such attribute.
    """
    import sys

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return "missing"
            obj = getattr(obj, attr)
        return "real"
    return "unknown"


def _translate_unpickling(path: str, exc: Exception) -> LayerProbeError:
    msg = _ANSI.sub("", str(exc))
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", msg)
    if match:
        name = match.group(1)
        status = _global_status(name)
        if status == "missing" or (name.startswith("torch.") and status != "real"):
            # A garbled torch internal name: damaged bytes, not a foreign class.
            return LayerProbeError(
                "not a readable PyTorch file: truncated or corrupted (garbled pickle data)", path=path
            )
        return LayerProbeError(f"{_UNSAFE} (it asks for {name})", path=path)
    if re.search(r"Can only (create new object|build)|call reduce for unrecognized", msg):
        return LayerProbeError(_UNSAFE, path=path)
    if "Unsupported operand" in msg:
        return LayerProbeError(
            "not a checkpoint: a pickle that torch.save did not write (weights-only loader "
            f"rejected it: {_one_line(msg.split('WeightsUnpickler error:')[-1].split('Check the documentation')[0], 80)})",
            path=path,
        )
    return LayerProbeError(
        "not a readable PyTorch file: truncated or corrupted "
        f"({_one_line(msg.split('WeightsUnpickler error:')[-1].split('Check the documentation')[0], 80)})",
        path=path,
    )


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a file written by ``torch.save`` without running any code from it.

    Uses ``torch.load(path, map_location="cpu", weights_only=True)``, memory-mapped
    (``mmap=True``) for the zip format so tensors are read from disk only when touched.

    Args:
        path: the file.

    Returns:
        The loaded object (tensors, containers and primitive values only).

    Raises:
        LayerProbeError: missing or empty file; not a PyTorch file ("not a checkpoint"); a
            truncated or corrupted file; a pickle that needs arbitrary Python objects
            ("refused: ... unsafe pickle; convert it to .safetensors"); a TorchScript archive.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"w": torch.ones(2)}, p)
    >>> safe_torch_load(p)["w"].tolist()
    [1.0, 1.0]
    """
    path = os.fspath(path)
    _check_file(path)
    kind = _sniff(path)
    if kind == "safetensors":
        raise LayerProbeError(
            "is a safetensors file, not a torch.save file; open it with open_checkpoint", path=path
        )
    if kind not in ("torch_zip", "pickle"):
        raise LayerProbeError(
            "not a checkpoint: no PyTorch zip or pickle header found (text or another format?)",
            path=path,
        )
    import pickle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch_zip")
    except pickle.UnpicklingError as exc:
        raise _translate_unpickling(path, exc) from None
    except RuntimeError as exc:
        msg = _ANSI.sub("", str(exc))
        if "TorchScript" in msg:
            raise LayerProbeError(
                "refused: a TorchScript archive contains code; save the state_dict as .safetensors",
                path=path,
            ) from None
        reason = msg.split(". ")[0].replace("PytorchStreamReader ", "")
        raise LayerProbeError(
            f"not a readable PyTorch file: truncated or corrupted ({_one_line(reason, 100)})",
            path=path,
        ) from None
    except (EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise LayerProbeError(
            "not a readable PyTorch file: truncated or corrupted "
            f"({type(exc).__name__}{': ' + _one_line(exc, 80) if str(exc) else ''})",
            path=path,
        ) from None


def _extract_state_dict(path: str, obj: Any) -> dict[str, torch.Tensor]:
    """The flat name → tensor dict inside a loaded ``.pt`` object, validated."""
    if not isinstance(obj, Mapping):
        raise LayerProbeError(
            f"holds a {type(obj).__name__}, expected a state dict (a dict of parameter name -> tensor)",
            path=path,
        )
    nested = [k for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)]
    if nested and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        if len(nested) > 1:
            raise LayerProbeError(
                "ambiguous checkpoint: both 'state_dict' and 'model' hold dicts, expected one",
                path=path,
            )
        obj = obj[nested[0]]
    if not obj:
        raise LayerProbeError("the state dict is empty, expected parameter tensors", path=path)
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise LayerProbeError(
                f"state dict key {key!r} has type {type(key).__name__}, expected a string name", path=path
            )
        if not isinstance(value, torch.Tensor):
            raise LayerProbeError(
                f"value of {key!r} has type {type(value).__name__}, expected a tensor "
                "(a state dict maps parameter names to tensors)",
                path=path,
            )
        out[key] = value
    return out


def load_pt_or_snapshot(path: str | os.PathLike) -> tuple[str, Any]:
    """Load a ``torch.save`` file once and say what it is.

    Returns:
        ``("snapshot", obj)`` for a layerprobe snapshot (the loaded dict, unvalidated: the
        snapshot reader checks it), else ``("state_dict", tensors)`` with the validated flat
        name → tensor dict (tensors memory-mapped where possible).

    Raises:
        LayerProbeError: everything :func:`safe_torch_load` raises, or not a state dict.
    """
    path = os.fspath(path)
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == SNAPSHOT_FORMAT:
        return "snapshot", obj
    return "state_dict", _extract_state_dict(path, obj)


# --------------------------------------------------------------------------- tensor sources


class TensorSource(abc.ABC):
    """Read-only, lazy view of the named tensors of one checkpoint.

    ``keys()`` lists names in a stable file order; ``shape``/``dtype``/``nbytes`` never read
    tensor data; ``get`` reads exactly one tensor (CPU, dtype as stored). Use as a context
    manager or call :meth:`close`.
    """

    path: str
    kind: str

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
    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` on CPU, as stored."""

    def nbytes(self, name: str) -> int:
        """Size of tensor ``name`` in bytes (no data read)."""
        numel = 1
        for d in self.shape(name):
            numel *= d
        return numel * self.dtype(name).itemsize

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` for every tensor, in ``keys()`` order."""
        return {k: self.shape(k) for k in self.keys()}

    def close(self) -> None:
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

    def _offsets(self) -> dict[str, tuple[int, int]]:
        """``{name: (absolute start, end)}`` of each tensor's bytes, from the JSON header."""
        cached = getattr(self, "_offsets_cache", None)
        if cached is None:
            with open(self.path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n).decode("utf-8"))
            cached = {k: (8 + n + int(v["data_offsets"][0]), 8 + n + int(v["data_offsets"][1]))
                      for k, v in header.items() if k != "__metadata__"}
            self._offsets_cache = cached
        return cached

    def get(self, name: str) -> torch.Tensor:
        if self._handle is None:
            raise LayerProbeError("checkpoint is closed", path=self.path)
        try:
            # A plain positioned read into a fresh buffer, not safe_open's memory map: the pages
            # of a read tensor do not stay mapped in this process, so a streamed comparison of
            # two big checkpoints holds only the tensors it is using (see docs, big checkpoints).
            shape, dtype = self.meta[name]
            start, end = self._offsets()[name]
            numel = 1
            for d in shape:
                numel *= d
            if end - start != numel * dtype.itemsize:
                raise ValueError(f"{end - start} bytes for shape {shape} and dtype {dtype}")
            out = torch.empty(shape, dtype=dtype)
            if numel:
                buf = memoryview(out.view(-1).view(torch.uint8).numpy())
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


class SafetensorsSource(TensorSource):
    """A single ``.safetensors`` file; tensors are read one at a time."""

    kind = "safetensors"

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

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file.meta:
            raise self._missing(name)
        return self._file.get(name)

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

    def get(self, name: str) -> torch.Tensor:
        return self._t(name)

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
                opened = _load_bin_shard(weights)
                self._open[name] = opened
                keys = list(opened)
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

    def get(self, name: str) -> torch.Tensor:
        _, opened = self._lookup(name)
        return opened.get(name) if self._safetensors else opened[name]

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
    _check_file(path, "index file")
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayerProbeError(f"malformed index JSON ({_one_line(exc, 100)})", path=path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise LayerProbeError(
            "index has no 'weight_map', expected {\"weight_map\": {tensor name: shard file}}", path=path
        )
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
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
    if not os.path.exists(path):
        raise LayerProbeError("checkpoint not found", path=path)
    if os.path.isdir(path):
        return ShardedSource(path)
    if path.endswith(".index.json"):  # the index of a sharded directory, named directly
        return ShardedSource(os.path.dirname(os.path.abspath(path)), weights_file=path)
    _check_file(path)
    if _sniff(path) == "safetensors" or path.endswith(".safetensors"):
        return SafetensorsSource(path)
    return StateDictSource(path)


# --------------------------------------------------------------------------- value checks


def check_finite(name: str, tensor: torch.Tensor, path: str | os.PathLike | None = None) -> None:
    """Raise if a floating-point tensor holds NaN or Inf.

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
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_bad = int((~finite).sum())
    raise LayerProbeError(
        f"non-finite values (NaN/Inf) in parameter {name!r}: {n_bad} of {tensor.numel()} values "
        f"({n_nan} NaN, {n_bad - n_nan} Inf)",
        path=path,
    )


# --------------------------------------------------------------------------- name alignment


def strip_common_prefix(keys: Iterable[str]) -> tuple[str, list[str]]:
    """Remove the longest dotted prefix shared by *all* names (e.g. ``module.`` from DDP).

    >>> strip_common_prefix(["module.a.w", "module.b.w"])
    ('module.', ['a.w', 'b.w'])
    >>> strip_common_prefix(["a.w", "b.w"])
    ('', ['a.w', 'b.w'])
    """
    keys = list(keys)
    if not keys:
        return "", []
    parts = [k.split(".") for k in keys]
    n = 0
    while all(len(p) > n + 1 and p[n] == parts[0][n] for p in parts):
        n += 1
    prefix = "".join(p + "." for p in parts[0][:n])
    return prefix, [k[len(prefix):] for k in keys]


def _is_head(stripped: str, head_modules: frozenset[str]) -> bool:
    return stripped.split(".", 1)[0] in head_modules


def _is_ignorable_buffer(stripped: str) -> bool:
    # Buffers that some library versions save and others do not (not learned parameters).
    return stripped.endswith(".position_ids") or stripped == "embeddings.token_type_ids" or stripped.endswith(
        ".num_batches_tracked"
    )


def _candidate_prefixes(keys: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                p = ".".join(parts[:depth]) + "."
                counts[p] = counts.get(p, 0) + 1
    threshold = max(1, len(keys) // 2)
    return [""] + sorted((p for p, c in counts.items() if c >= threshold), key=len)


def _strip_map(keys: Sequence[str], prefix: str) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for k in keys:
        s = k[len(prefix):] if prefix and k.startswith(prefix) else k
        if s in out:
            return None  # stripping would merge two names
        out[s] = k
    return out


@dataclass(frozen=True)
class Alignment:
    """How the parameter names of checkpoint A and checkpoint B correspond.

    Attributes:
        pairs: ``(name in A, name in B)`` for every parameter present in both, in A's order.
        prefix_a, prefix_b: the leading module name removed from each side (``""`` if none),
            e.g. ``"bert."`` for a task model compared with a bare encoder.
        only_a, only_b: non-head parameters present on one side only (original names).
        head_only_a, head_only_b: task-head parameters (``classifier.*``, ``pooler.*``, ...)
            present on one side only — expected when a task model meets a bare model.
        ignored_a, ignored_b: bookkeeping buffers on one side only (``position_ids``, ...).
    """

    pairs: list[tuple[str, str]]
    prefix_a: str = ""
    prefix_b: str = ""
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    head_only_a: list[str] = field(default_factory=list)
    head_only_b: list[str] = field(default_factory=list)
    ignored_a: list[str] = field(default_factory=list)
    ignored_b: list[str] = field(default_factory=list)


def align_names(
    keys_a: Sequence[str],
    keys_b: Sequence[str],
    head_modules: Iterable[str] = HEAD_MODULES,
) -> Alignment:
    """Map the names of B onto the names of A, tolerating one extra leading module name.

    Tries stripping ``""`` and each leading one- or two-component prefix that covers at least
    half of a side's names (``bert.``, ``model.``, ``module.``, ``model.bert.``) from each side
    and keeps the choice that matches the most names (ties: the shortest prefixes). Names
    without the prefix (e.g. ``classifier.weight`` next to ``bert.*``) are kept as they are.
    Never raises: the caller decides what is an error (see :func:`match_state`).

    >>> al = align_names(["bert.encoder.w", "bert.pooler.w", "classifier.w"], ["encoder.w"])
    >>> al.pairs, al.prefix_a, al.head_only_a, al.only_a
    ([('bert.encoder.w', 'encoder.w')], 'bert.', ['bert.pooler.w', 'classifier.w'], [])
    """
    keys_a, keys_b = list(keys_a), list(keys_b)
    heads = frozenset(head_modules)
    best: tuple[tuple[int, int], str, str, dict[str, str], dict[str, str]] | None = None
    for pa in _candidate_prefixes(keys_a):
        map_a = _strip_map(keys_a, pa)
        if map_a is None:
            continue
        for pb in _candidate_prefixes(keys_b):
            map_b = _strip_map(keys_b, pb)
            if map_b is None:
                continue
            score = (len(map_a.keys() & map_b.keys()), -(len(pa) + len(pb)))
            if best is None or score > best[0]:
                best = (score, pa, pb, map_a, map_b)
    assert best is not None  # "" / "" always qualifies: names within one file are unique
    _, pa, pb, map_a, map_b = best
    pairs = [(map_a[s], map_b[s]) for s in map_a if s in map_b]
    result: dict[str, dict[str, list[str]]] = {}
    for side, mine, other in (("a", map_a, map_b), ("b", map_b, map_a)):
        lists: dict[str, list[str]] = {"only": [], "head": [], "ignored": []}
        for s, original in mine.items():
            if s in other:
                continue
            if _is_head(s, heads):
                lists["head"].append(original)
            elif _is_ignorable_buffer(s):
                lists["ignored"].append(original)
            else:
                lists["only"].append(original)
        result[side] = lists
    return Alignment(
        pairs=pairs,
        prefix_a=pa,
        prefix_b=pb,
        only_a=result["a"]["only"],
        only_b=result["b"]["only"],
        head_only_a=result["a"]["head"],
        head_only_b=result["b"]["head"],
        ignored_a=result["a"]["ignored"],
        ignored_b=result["b"]["ignored"],
    )


def _shape_of(
    shapes: Mapping[str, Sequence[int]] | Sequence[Sequence[int]], name: str, index: dict[str, int]
) -> tuple[int, ...]:
    if isinstance(shapes, Mapping):
        return tuple(int(d) for d in shapes[name])
    return tuple(int(d) for d in shapes[index[name]])


def match_state(
    keys_a: Sequence[str],
    shapes_a: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
    keys_b: Sequence[str],
    shapes_b: Mapping[str, Sequence[int]] | Sequence[Sequence[int]],
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    head_modules: Iterable[str] = HEAD_MODULES,
) -> Alignment:
    """Check that two checkpoints hold the same parameters with the same shapes.

    Names are aligned with :func:`align_names` (a ``bert.``-style prefix on one side is fine).
    Task-head parameters present on one side only are returned in ``head_only_*``, not raised.

    Args:
        keys_a, keys_b: parameter names of each checkpoint.
        shapes_a, shapes_b: ``{name: shape}`` or a list of shapes parallel to the keys.
        path_a, path_b: the files, for messages.
        head_modules: first name components that mark task-head parameters.

    Returns:
        The :class:`Alignment` (``pairs`` in A's order).

    Raises:
        LayerProbeError: one line saying exactly what differs — non-head names on one side
            only (count and up to 3 names per side), the first shape mismatch (name and both
            shapes, plus how many others differ), or no names in common at all.

    >>> match_state(["w"], {"w": (2, 3)}, ["w"], {"w": (3, 2)}, "a.pt", "b.pt")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: a.pt: shape mismatch with b.pt: parameter 'w' is (2, 3) in a.pt but (3, 2) in b.pt
    """
    pa, pb = os.fspath(path_a), os.fspath(path_b)
    keys_a, keys_b = list(keys_a), list(keys_b)
    al = align_names(keys_a, keys_b, head_modules)
    if not al.pairs:
        raise LayerProbeError(
            f"no parameter names in common with {pb} ({len(keys_a)} names here, e.g. "
            f"{_names(keys_a)}; {len(keys_b)} there, e.g. {_names(keys_b)}); expected the same model",
            path=pa,
        )
    if al.only_a or al.only_b:
        parts = []
        if al.only_a:
            parts.append(f"{len(al.only_a)} only in {pa} ({_names(al.only_a)})")
        if al.only_b:
            parts.append(f"{len(al.only_b)} only in {pb} ({_names(al.only_b)})")
        raise LayerProbeError(
            f"parameter names differ from {pb}: " + "; ".join(parts)
            + f"; {len(al.pairs)} in common; expected the same architecture",
            path=pa,
        )
    idx_a = {k: i for i, k in enumerate(keys_a)}
    idx_b = {k: i for i, k in enumerate(keys_b)}
    bad = []
    for na, nb in al.pairs:
        sa = _shape_of(shapes_a, na, idx_a)
        sb = _shape_of(shapes_b, nb, idx_b)
        if sa != sb:
            bad.append((na, nb, sa, sb))
    if bad:
        na, nb, sa, sb = bad[0]
        shown = repr(na) if na == nb else f"{na!r} ({nb!r} in {pb})"
        more = f" (and {len(bad) - 1} more mismatched)" if len(bad) > 1 else ""
        raise LayerProbeError(
            f"shape mismatch with {pb}: parameter {shown} is {sa} in {pa} but {sb} in {pb}{more}",
            path=pa,
        )
    return al


def match_sources(src_a: TensorSource, src_b: TensorSource, head_modules: Iterable[str] = HEAD_MODULES) -> Alignment:
    """:func:`match_state` for two open :class:`TensorSource` objects (reads no tensor data)."""
    return match_state(
        src_a.keys(), src_a.shapes(), src_b.keys(), src_b.shapes(), src_a.path, src_b.path, head_modules
    )
