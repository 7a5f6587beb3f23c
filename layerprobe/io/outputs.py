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
import errno
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from layerprobe.errors import LayerProbeError
from layerprobe.errors import one_line as _one_line

__all__ = [
    "atomic_output_dir",
    "atomic_save_torch",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_not_an_input",
    "check_output_file",
    "ensure_writable_dir",
    "write_output_set",
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
    if os.path.islink(path) and not os.path.exists(path):  # makedirs would only say "File exists"
        raise LayerProbeError(
            "cannot write to output directory: it is a symbolic link that leads nowhere (dangling, or a loop)",
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


def check_output_file(path: str | os.PathLike) -> str:
    """The file an output path really names, checked before any work; symlinks are followed.

    A result replaces a regular file (or creates a new one); the target of a symlink is replaced,
    never the link itself, and a device, FIFO, socket or directory is refused, never replaced.

    Raises:
        LayerProbeError: ``""``, an existing directory or special file, or a missing parent.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> os.symlink(os.path.join(d, "real.txt"), os.path.join(d, "link.txt"))
    >>> check_output_file(os.path.join(d, "link.txt")) == os.path.join(os.path.realpath(d), "real.txt")
    True
    """
    import stat

    path = os.fspath(path)
    if path == "":
        raise LayerProbeError("output file name is empty")
    if os.path.islink(path):
        path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise LayerProbeError(f"cannot write output file ({_one_line(exc.strerror or exc)})", path=path) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise LayerProbeError(f"cannot write output file: it exists and is {kind}, expected a file name "
                              f"(it is never replaced)", path=path)
    return path


#: files of a model directory that a loader reads: an output never replaces one of them
_READ_NAMES = frozenset({"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                         "adapter_config.json", "trainer_state.json"})
_READ_SUFFIXES = (".safetensors", ".bin", ".model", ".index.json")


def check_not_an_input(outputs: str | os.PathLike | list, inputs: list) -> None:
    """Refuse outputs that would replace a file this run reads (``-o`` naming the probe, say).

    An output may not be an input file itself, nor replace a weights, config or tokenizer file
    directly inside an input directory. ``None`` inputs are skipped; missing outputs are fine.

    Raises:
        LayerProbeError: naming the output and the input it would destroy.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "probe.txt")
    >>> _ = open(p, "w").write("good movie")
    >>> check_not_an_input(p, [p])
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: ...probe.txt: the output would replace an input of this run (...probe.txt); choose another output name
    """
    outs = [outputs] if isinstance(outputs, (str, os.PathLike)) else list(outputs)
    for out in outs:
        out = os.fspath(out)
        real = os.path.realpath(out)
        if not os.path.isfile(real):
            continue
        for inp in inputs:
            if inp is None or not isinstance(inp, (str, os.PathLike)):
                continue
            inp = os.fspath(inp)
            try:
                same = os.path.isfile(inp) and os.path.samefile(inp, real)
            except OSError:
                same = False
            inside = (os.path.isdir(inp) and os.path.dirname(real) == os.path.realpath(inp)
                      and (os.path.basename(real) in _READ_NAMES or real.endswith(_READ_SUFFIXES)))
            if same or inside:
                where = inp if same else f"a file of the input directory {inp}"
                raise LayerProbeError(f"the output would replace an input of this run ({where}); choose another "
                                      f"output name", path=out)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike) -> Iterator[str]:
    """Build a set of output files in a temporary sibling directory, then swap it in as ``path``.

    Files are written into the yielded directory. On success, entries already in ``path`` that
    were not written are carried over (files hard-linked or copied, folders moved), the old
    directory is renamed aside, the new one renamed into place, and the old one removed: readers
    see all the new files or all the old ones. On any exception (SIGINT, SIGTERM via the CLI,
    disk full, a folder named like an output file) the temporary directory is removed and
    ``path`` is left as it was.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "out")
    >>> with atomic_output_dir(d) as tmp:
    ...     _ = atomic_write_text(os.path.join(tmp, "a.txt"), "x")
    >>> sorted(os.listdir(d))
    ['a.txt']
    """
    import shutil

    path = os.path.abspath(os.fspath(path))
    if os.path.islink(path):
        path = os.path.realpath(path)
    parent = os.path.dirname(path)
    ensure_writable_dir(parent)
    if os.path.exists(path) and not os.path.isdir(path):
        raise LayerProbeError("cannot write to output directory: it exists but is a file, expected a directory",
                              path=path)
    try:
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise LayerProbeError(f"cannot write to output directory: {_one_line(exc.strerror or exc)}",
                              path=parent) from None
    old = None
    body_done = False
    try:
        yield tmp
        body_done = True
        written = set(os.listdir(tmp))
        moved: list[str] = []
        if os.path.isdir(path):
            for name in os.listdir(path):
                if name in written:
                    continue
                src = os.path.join(path, name)
                if os.path.isdir(src) and not os.path.islink(src):
                    os.rename(src, os.path.join(tmp, name))
                    moved.append(name)
                elif os.path.islink(src):
                    os.symlink(os.readlink(src), os.path.join(tmp, name))
                else:
                    try:
                        os.link(src, os.path.join(tmp, name))
                    except OSError:
                        shutil.copy2(src, os.path.join(tmp, name))
            old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".old", dir=parent)
            os.rmdir(old)
            try:
                os.rename(path, old)
            except BaseException:
                for name in moved:  # put the folders back
                    os.rename(os.path.join(tmp, name), os.path.join(path, name))
                raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
                for name in moved:
                    os.rename(os.path.join(tmp, name), os.path.join(path, name))
                old = None
            raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, LayerProbeError) and exc.path and exc.path.startswith(tmp + os.sep):
            # name the file the user asked for, not its place in the temporary folder
            raise LayerProbeError(exc.message, path=os.path.join(path, os.path.relpath(exc.path, tmp))) from None
        if isinstance(exc, OSError) and (body_done or _about_output(exc, tmp)):
            # disk full while writing the output or swapping it in: one line, ``path`` as it was (an error of
            # the caller's own work inside the block, e.g. a missing input file, propagates unchanged)
            raise LayerProbeError(f"cannot write to output directory ({_one_line(exc.strerror or exc)}); it was "
                                  f"left as it was", path=path) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_output_set(path: str | os.PathLike, writers: Mapping[str, Callable[[str], object]]) -> list[str]:
    """Write a set of files into the directory ``path`` together: the one output-set writer.

    ``writers[name](file)`` writes one file into a temporary sibling directory; the set appears
    together, or not at all (:func:`atomic_output_dir`). Returns the final paths, in order.
    """
    with atomic_output_dir(path) as tmp:
        for name, write in writers.items():
            write(os.path.join(tmp, name))
    return [os.path.join(os.fspath(path), name) for name in writers]


def _about_output(exc: OSError, tmp: str) -> bool:
    """Whether an error raised inside :func:`atomic_output_dir`'s block concerns writing the output: it
    names a file in the temporary folder, or the disk or quota is full."""
    names = [n for n in (exc.filename, getattr(exc, "filename2", None)) if isinstance(n, (str, os.PathLike))]
    inside = any(os.path.abspath(os.fsdecode(n)).startswith(tmp + os.sep) for n in names)
    return inside or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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
    path = check_output_file(path)  # a symlink is written through; a device, FIFO or directory is refused
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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, quota, I/O error: one line, the target untouched
            raise LayerProbeError(f"cannot write output file ({_one_line(exc.strerror or exc)}); nothing was "
                                  f"written", path=path) from None
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
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # the zip writer reports a failed write (disk full) as RuntimeError
            cause = exc.__context__ if isinstance(exc.__context__, OSError) else None
            if cause is not None:
                raise cause from None
            if "write" not in str(exc).lower():
                raise
            raise LayerProbeError(f"cannot write output file ({_one_line(exc, 120)}); nothing was written",
                                  path=path) from None
    return os.fspath(path)
