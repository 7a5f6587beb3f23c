"""Craft ``.pt`` files whose unpickling would run code, to prove that loaders never run it.

The payload only creates an empty marker file, so a test can check that it never ran.
"""

from __future__ import annotations

import os
import pickletools
import zipfile

import torch


class _OpenMarker:
    """Unpickling this calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemMarker:
    """Unpickling this calls ``os.system("touch marker")``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def make_malicious_pt(
    path: str | os.PathLike, marker: str | os.PathLike, via: str = "open", legacy: bool = False
) -> str:
    """Write a ``torch.save`` file that would create ``marker`` if it were ever unpickled.

    Args:
        path: file to write.
        marker: file the payload would create.
        via: ``"open"`` (calls ``open(marker, "w")``) or ``"system"`` (``os.system("touch ...")``).
        legacy: use the pre-1.6 non-zip serialization instead of the zip format.

    Returns:
        ``path`` as a string. The file looks like an ordinary state dict with one extra entry.
    """
    marker = os.fspath(marker)
    payload = _OpenMarker(marker) if via == "open" else _SystemMarker(marker)
    obj = {"encoder.layer.0.weight": torch.ones(2, 2), "evil": payload}
    torch.save(obj, os.fspath(path), _use_new_zipfile_serialization=not legacy)
    return os.fspath(path)


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """Globals referenced by the pickle inside a zip-format ``.pt`` file, read without unpickling.

    Lets a test check that the crafted payload really is live (it names ``open`` / ``system``)
    without ever executing it.
    """
    with zipfile.ZipFile(os.fspath(path)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        data = zf.read(name)
    found = []
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    return found


def model_variant(root, good, name: str, cfg=None, drop=(), files=None):
    """``root/name``: a copy of the model directory ``good`` with ``cfg(config_dict)`` applied to its
    config.json, the files or folders in ``drop`` removed, and ``files`` added (``name: bytes | str``;
    ``None`` makes an empty folder of that name). Made once; later calls return the same path."""
    import json
    import shutil
    from pathlib import Path

    d = Path(root) / name
    if not d.exists():
        shutil.copytree(good, d)
        if cfg:
            c = json.loads((d / "config.json").read_text())
            cfg(c)
            (d / "config.json").write_text(json.dumps(c))
        for n in drop:
            p = d / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for n, v in (files or {}).items():
            if v is None:
                (d / n).mkdir()
            else:
                (d / n).write_bytes(v if isinstance(v, bytes) else v.encode())
    return d
