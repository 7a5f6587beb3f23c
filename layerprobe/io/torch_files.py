"""Load PyTorch files without running code from them.

Rule zero: no code from a file ever runs. PyTorch files are read with
``torch.load(..., weights_only=True)`` only (memory-mapped where the format allows); nothing is
unpickled any other way. A refused or broken file raises a one-line
:class:`~layerprobe.errors.LayerProbeError` that names the file, says what was found and what
was expected (an unsafe pickle names the class it asked for).

* :func:`safe_torch_load` — any ``.pt`` / ``.bin`` / ``.pth`` file.
* :func:`load_pt_or_snapshot` — a layerprobe snapshot or a state dict, told apart after one load.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from layerprobe.errors import LayerProbeError, strip_ansi
from layerprobe.errors import one_line as _one_line

__all__ = ["MAX_PICKLE_BYTES", "MAX_PICKLE_OPS", "MAX_TENSORS", "SNAPSHOT_FORMAT", "count_tensors", "load_pt_or_snapshot",
           "safe_torch_load", "tensor_problem"]

#: most tensors one checkpoint file may hold (a .pt/.bin/.pth or a .safetensors), counted before
#: loading: its index (zip directory, safetensors header) and its pickle are read, no tensor is built.
#: Checkpoints hold hundreds to a few thousand tensors per file (a 70B model: 723 in all).
MAX_TENSORS = 100_000
#: most pickle opcodes read while counting (a torch.save state dict takes about 31 per tensor)
MAX_PICKLE_OPS = 64 * MAX_TENSORS
#: largest ``data.pkl`` of a zip-format file (names and shapes only; 100,000 tensors take about 23 MB)
MAX_PICKLE_BYTES = 256 << 20

SNAPSHOT_FORMAT = "layerprobe-snapshot"
_UNSAFE = (
    "refused: the file needs arbitrary Python objects to load (unsafe pickle); "
    "convert it to .safetensors"
)


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
    from layerprobe.io.files import check_exists, regular_file

    check_exists(path, what)  # a symlink loop or a name too long is said so, not "not found"
    if os.path.isdir(path):
        raise LayerProbeError(f"is a directory, expected a {what}", path=path)

    regular_file(path, what)  # a FIFO or device is refused here, never read (or called empty)
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


#: a Python dotted name (``module.Class``): what an intact pickle names
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _pickle_intact(path: str) -> bool:
    """Whether the pickle of a ``torch.save`` file is as written: for the zip format, ``data.pkl``
    matches the CRC-32 its zip directory records; for both formats, its opcodes parse to the end.
    Reads at most :data:`MAX_PICKLE_BYTES` (run after :func:`count_tensors`); never unpickles."""
    import pickletools
    import zipfile

    try:
        if _sniff(path) == "torch_zip":
            with zipfile.ZipFile(path) as z:
                pkl = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
                if z.getinfo(pkl).file_size > MAX_PICKLE_BYTES:
                    return False
                with z.open(pkl) as stream:
                    data = stream.read()  # reading to the end checks the CRC-32 (BadZipFile if it differs)
            for _ in pickletools.genops(io.BytesIO(data)):
                pass
            return True
        with open(path, "rb") as f:
            for _ in range(4):  # magic number, protocol, sys info, the object
                for _ in pickletools.genops(f):
                    pass
        return True
    except Exception:  # noqa: BLE001 - any failure means the bytes are damaged
        return False


def _translate_unpickling(path: str, exc: Exception) -> LayerProbeError:
    msg = strip_ansi(str(exc))
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", msg)
    if match:
        name = match.group(1)
        status = _global_status(name)
        if status == "missing" or (name.startswith("torch.") and status != "real"):
            if not (_DOTTED.fullmatch(name) and _pickle_intact(path)):
                # A garbled name in damaged bytes, not a class the file was saved with.
                return LayerProbeError(
                    "not a readable PyTorch file: truncated or corrupted (garbled pickle data)", path=path
                )
            # Intact bytes: the file was saved with a class this Python does not have (a class of
            # the training script, ``__main__.TrainArgs``, or of another library version).
            return LayerProbeError(f"{_UNSAFE} (it asks for {name}, a class that does not exist here: an object "
                                   "of the script or library that saved it)", path=path)
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


def _zip_entries(path: str) -> int | None:
    """The number of members a zip file's end-of-central-directory record states (O(1): the last
    64 KiB are read), or None when none is found (then torch's reader says what is wrong)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - (65536 + 22)))
        tail = f.read()
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) < i + 12:
        return None
    total = int.from_bytes(tail[i + 10:i + 12], "little")
    if total == 0xFFFF:  # zip64: the count is in the zip64 end record, before the locator
        j = tail.rfind(b"PK\x06\x06", 0, i)
        if j >= 0 and len(tail) >= j + 40:
            total = int.from_bytes(tail[j + 32:j + 40], "little")
    return total


def _too_many(path: str, what: str) -> LayerProbeError:
    return LayerProbeError(f"holds more than {MAX_TENSORS:,} tensors ({what}), more than the {MAX_TENSORS:,} accepted "
                           "in one checkpoint file; save the weights in shards (model.safetensors.index.json)", path=path)


def _count_pickle(stream: Any, path: str, pickles: int = 1) -> int:
    """Tensor references (persistent ids) in the next ``pickles`` pickles of ``stream``, read
    opcode by opcode without unpickling; stops past :data:`MAX_TENSORS` or :data:`MAX_PICKLE_OPS`."""
    import pickletools

    ops = refs = 0
    for _ in range(pickles):
        for op, _, _ in pickletools.genops(stream):
            ops += 1
            if op.name in ("BINPERSID", "PERSID"):
                refs += 1
                if refs > MAX_TENSORS:
                    raise _too_many(path, "counted in its pickle before loading")
            if ops > MAX_PICKLE_OPS:
                raise LayerProbeError(f"its pickle has more than {MAX_PICKLE_OPS:,} operations (the most read for "
                                      f"{MAX_TENSORS:,} tensors); not loaded", path=path)
    return refs


def count_tensors(path: str | os.PathLike) -> int | None:
    """Tensors a ``torch.save`` file refers to, counted before anything is loaded (bounded time).

    Zip format: the member count of the zip directory (one per storage), then the opcodes of
    ``data.pkl``; legacy format: the opcodes of its pickles. Returns None when the file cannot be
    read this way (torch's own reader then says what is wrong).

    Raises:
        LayerProbeError: more than :data:`MAX_TENSORS` tensors or :data:`MAX_PICKLE_OPS` opcodes.

    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"a": torch.ones(2), "b": torch.zeros(3)}, p)
    >>> count_tensors(p)
    2
    """
    import zipfile

    path = os.fspath(path)
    kind = _sniff(path)
    try:
        if kind == "torch_zip":
            entries = _zip_entries(path)
            if entries is not None and entries > MAX_TENSORS + 16:  # one member per storage, a few of metadata
                raise _too_many(path, f"its zip directory lists {entries:,} members")
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return None
                size = z.getinfo(pkl).file_size
                if size > MAX_PICKLE_BYTES:
                    raise LayerProbeError(f"its pickle (data.pkl) has {size:,} bytes, more than the "
                                          f"{MAX_PICKLE_BYTES:,} read for {MAX_TENSORS:,} tensors; not loaded", path=path)
                with z.open(pkl) as stream:
                    data = stream.read(MAX_PICKLE_BYTES + 1)
                return _count_pickle(io.BytesIO(data), path)
        if kind == "pickle":
            with open(path, "rb") as stream:  # magic number, protocol, sys info, then the object
                return _count_pickle(stream, path, pickles=4)
    except LayerProbeError:
        raise
    except Exception:  # noqa: BLE001 - damaged bytes: torch.load reports them in its own words
        return None
    return None


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

    count_tensors(path)  # more than MAX_TENSORS: refused before torch builds any
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch_zip")
    except pickle.UnpicklingError as exc:
        raise _translate_unpickling(path, exc) from None
    except RuntimeError as exc:
        msg = strip_ansi(str(exc))
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


def tensor_problem(t: torch.Tensor) -> str | None:
    """What makes ``t`` unusable as a stored weight, or None: the one per-tensor check of a loaded file.

    A weight must be a dense (strided) tensor with data (not on the meta device), neither quantized
    nor complex; integer and bool tensors pass (buffers such as ids and masks; a parameter stored as
    integers is refused where parameters are told apart, :func:`~layerprobe.io.model_dir.drop_non_parameters`).

    >>> tensor_problem(torch.ones(2)) is None
    True
    >>> tensor_problem(torch.empty(2, device="meta"))
    'is on the meta device (it has no data: the model was saved before its weights were materialised)'
    >>> tensor_problem(torch.ones(2, dtype=torch.complex64))
    'has complex dtype torch.complex64, expected real floating-point weights'
    """
    if t.is_meta:
        return "is on the meta device (it has no data: the model was saved before its weights were materialised)"
    if t.layout != torch.strided or t.is_nested:
        return f"is a {'nested' if t.is_nested else str(t.layout).replace('torch.', '')} tensor, expected a dense one"
    if t.is_quantized:
        return f"is a quantized tensor ({t.dtype}), expected floating-point weights"
    if t.is_complex():
        return f"has complex dtype {t.dtype}, expected real floating-point weights"
    return None


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
        problem = tensor_problem(value)
        if problem:
            raise LayerProbeError(f"tensor {_one_line(repr(key), 80)} {problem}", path=path)
        out[key] = value
        if len(out) > MAX_TENSORS:
            raise _too_many(path, "in its state dict")
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
