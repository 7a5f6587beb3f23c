"""Atomic file output: a file is either fully written or not there at all.

Every writer goes through :func:`atomic_write`: the data goes to a temporary file in the target's
own directory (so the final :func:`os.replace` is a same-filesystem rename), is flushed and
fsynced, and only then replaces the target. On any exception the temporary file is deleted and
the target is left as it was.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> p = atomic_write_text(os.path.join(d, "a.txt"), "hello")
>>> open(p).read()
'hello'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from layerprobe.errors import LayerProbeError
from layerprobe.errors import one_line as _one_line

__all__ = [
    "atomic_save_torch",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "ensure_writable_dir",
]


def ensure_writable_dir(path: str | os.PathLike) -> str:
    """Create ``path`` (with parents) if needed and check that files can be written in it.

    Args:
        path: directory to create or check.

    Returns:
        The directory path as a string.

    Raises:
        LayerProbeError: the path exists but is not a directory, cannot be created (e.g. a parent
            is a regular file), or is not writable by this process.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "a", "b")
    >>> ensure_writable_dir(d) == d and os.path.isdir(d)
    True
    """
    path = os.fspath(path)
    if path == "":
        path = "."
    if os.path.exists(path) and not os.path.isdir(path):
        raise LayerProbeError(
            "cannot write to output directory: it exists but is a file, expected a directory",
            path=path,
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LayerProbeError(
            f"cannot write to output directory: cannot create it ({reason})", path=path
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LayerProbeError(
            "cannot write to output directory: permission denied (not writable)", path=path
        )
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it atomically replaces ``path``.

    Args:
        path: final file path. Its directory must exist and be writable.
        mode: ``"wb"`` (default) or ``"w"`` for text (UTF-8 unless ``encoding`` is given).
        encoding: text encoding, only for text mode.

    Yields:
        An open file object. Write to it inside the ``with`` block.

    Raises:
        LayerProbeError: the output directory is missing or not writable.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with atomic_write(p) as f:
    ...     _ = f.write(b"abc")
    >>> open(p, "rb").read()
    b'abc'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise LayerProbeError(
            "cannot write to output directory: it does not exist", path=directory
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LayerProbeError(
            "cannot write to output directory: permission denied (not writable)", path=directory
        )
    try:
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise LayerProbeError(
            f"cannot write to output directory: {_one_line(exc.strerror or exc)}", path=directory
        ) from None
    try:
        f: IO[Any]
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0o600; give the result the usual umask-based permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not fatal where unsupported
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, newlines untouched); return the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return os.fspath(path)


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj)`` to ``path`` atomically and return the path.

    Save only plain tensors, numbers, strings, lists and dicts so that the file loads with
    ``torch.load(..., weights_only=True)``.
    """
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return os.fspath(path)
