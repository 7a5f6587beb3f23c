"""Guards for every file read from disk: regular files only, bounded reads, safe JSON.

Every function raises a one-line :class:`~layerprobe.errors.LayerProbeError` naming the file.

* :func:`regular_file` refuses FIFOs, devices, sockets and directories (a FIFO would hang a read,
  ``/dev/zero`` would read until memory runs out) and unreadable files ("permission denied", not
  "no such file").
* :func:`read_bounded` / :func:`load_json` read at most a fixed number of bytes; JSON that nests
  too deeply, holds a number with thousands of digits or a lone surrogate is refused.

Model directories are checked in :mod:`layerprobe.io.model_dir`, tokenizers in
:mod:`layerprobe.io.tokenizer`.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> os.mkfifo(os.path.join(d, "p.csv"))
>>> regular_file(os.path.join(d, "p.csv"), "probe file")
Traceback (most recent call last):
...
layerprobe.errors.LayerProbeError: ...p.csv: probe file is a FIFO (named pipe), expected a regular file
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from layerprobe.errors import LayerProbeError, one_line

__all__ = [
    "MAX_JSON_BYTES",
    "check_exists",
    "json_loads",
    "load_json",
    "read_bounded",
    "regular_file",
    "unique_keys",
]

#: largest JSON file read (config, index, comparison, tokenizer config): 64 MiB
MAX_JSON_BYTES = 64 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str = "file") -> int:
    """Check that ``path`` is a readable regular file (symlinks followed); return its size in bytes.

    Raises:
        LayerProbeError: missing, a directory, a FIFO/device/socket, or not readable.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LayerProbeError(f"{what} not found (no such file)", path) from None
    except PermissionError:
        raise LayerProbeError(f"cannot read {what}: permission denied", path) from None
    except OSError as exc:
        raise LayerProbeError(f"cannot read {what} ({one_line(exc.strerror or exc)})", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise LayerProbeError(f"{what} is a directory, expected a regular file", path)
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise LayerProbeError(f"{what} is {kind}, expected a regular file", path)
    if not stat.S_ISREG(st.st_mode):
        raise LayerProbeError(f"{what} is not a regular file", path)
    if not os.access(path, os.R_OK):
        raise LayerProbeError(f"cannot read {what}: permission denied", path)
    return st.st_size


def check_exists(path: str | os.PathLike, what: str = "file", missing: str | None = None) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed), with a one-line reason when it fails.

    ``os.path.exists`` answers False for every failure, so "not found" used to be reported for a
    symlink loop, a dangling link, a name too long for the file system or a parent that is a file.

    Raises:
        LayerProbeError: ``missing`` (default ``"<what> not found"``) for a missing path, else what
            really went wrong.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> os.symlink(os.path.join(d, "b"), os.path.join(d, "a")); os.symlink(os.path.join(d, "a"), os.path.join(d, "b"))
    >>> check_exists(os.path.join(d, "a"), "probe file")
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: ...a: probe file is a symbolic link loop (too many levels of symbolic links)
    """
    import errno

    path = os.fspath(path)
    try:
        return os.stat(path)
    except OSError as exc:
        code = exc.errno
    if code == errno.ELOOP:
        raise LayerProbeError(f"{what} is a symbolic link loop (too many levels of symbolic links)", path)
    if code == errno.ENAMETOOLONG:
        raise LayerProbeError(f"{what} name is too long for the file system", path)
    if code == errno.ENOTDIR:
        raise LayerProbeError(f"{what} not found (a parent of the path is a file, not a directory)", path)
    if code in (errno.EACCES, errno.EPERM):
        raise LayerProbeError(f"cannot read {what}: permission denied", path)
    missing = missing or f"{what} not found"
    if code == errno.ENOENT and os.path.islink(path):
        raise LayerProbeError(f"{missing} (a symbolic link to {one_line(repr(os.readlink(path)), 200)}, which does "
                              f"not exist)", path)
    if code == errno.ENOENT:
        raise LayerProbeError(missing, path)
    raise LayerProbeError(f"cannot read {what} ({one_line(os.strerror(code) if code else 'unknown error')})", path)


def unique_keys(path: str | os.PathLike, what: str) -> Any:
    """A ``json.loads`` ``object_pairs_hook`` refusing an object that names a key twice (ambiguous:
    readers disagree on which one counts).

    >>> json.loads('{"a": 1, "a": 2}', object_pairs_hook=unique_keys("h.json", "the header names"))
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: h.json: the header names 'a' twice (ambiguous)
    """
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise LayerProbeError(f"{what} {one_line(repr(k), 80)} twice (ambiguous)", path)
            out[k] = v
        return out

    return hook


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> _ = open(p, "w").write("{}")
    >>> read_bounded(p, 10)
    b'{}'
    """
    path = os.fspath(path)
    size = regular_file(path, what)
    if size > limit:
        raise LayerProbeError(f"{what} is too large ({size:,} bytes; at most {limit:,} are read)", path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise LayerProbeError(f"cannot read {what} ({one_line(exc.strerror or exc)})", path) from None
    if len(data) > limit:
        raise LayerProbeError(f"{what} is too large (more than {limit:,} bytes)", path)
    return data


def _has_lone_surrogate(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def json_loads(text: str | bytes, path: str | os.PathLike | None = None, what: str = "JSON",
               allow_nan: bool = False) -> Any:
    """``json.loads`` that turns every way JSON can go wrong into one line naming the file.

    Refused: invalid UTF-8, malformed JSON, nesting too deep (RecursionError), numbers too long to
    convert, NaN/Infinity literals, and strings holding a lone surrogate (``"\\ud800"``).

    >>> json_loads('{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> json_loads("[" * 100000)
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: malformed JSON: nested too deeply
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LayerProbeError(f"{what} is not UTF-8 text (invalid byte at offset {exc.start})", path) from None

    def _no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        obj = json.loads(text, parse_constant=float if allow_nan else _no_constant)
    except RecursionError:
        raise LayerProbeError(f"malformed {what}: nested too deeply", path) from None
    except ValueError as exc:  # JSONDecodeError, and int() past the digit limit
        raise LayerProbeError(f"malformed {what} ({one_line(exc, 120)})", path) from None
    try:
        if _has_lone_surrogate(obj):
            raise LayerProbeError(f"malformed {what}: a string holds a lone surrogate (not valid Unicode)", path)
    except RecursionError:
        raise LayerProbeError(f"malformed {what}: nested too deeply", path) from None
    return obj


def load_json(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_JSON_BYTES,
              allow_nan: bool = False) -> Any:
    """Read and parse a JSON file through :func:`read_bounded` and :func:`json_loads` (``allow_nan``: read
    ``NaN``/``Infinity`` as floats, for files layerprobe itself writes with them, e.g. a Trainer state)."""
    return json_loads(read_bounded(path, limit, what), path, "JSON", allow_nan=allow_nan)
