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

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from layerprobe.errors import LayerProbeError, strip_ansi
from layerprobe.errors import one_line as _one_line

__all__ = ["SNAPSHOT_FORMAT", "load_pt_or_snapshot", "safe_torch_load"]

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


def _translate_unpickling(path: str, exc: Exception) -> LayerProbeError:
    msg = strip_ansi(str(exc))
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
