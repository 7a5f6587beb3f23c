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
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "check_output_names",
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


#: temporary names are short and fixed in length, so that any legal output name (up to 255 bytes) still works
_TMP_PREFIX = ".lp-"


def _kind_of(st: os.stat_result) -> str:
    import stat

    mode = st.st_mode
    return ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def check_output_names(directory: str | os.PathLike, names: Iterable[str]) -> None:
    """Refuse, before any work, an entry of ``directory`` that a result named in ``names`` would replace
    but that is not a plain file: a folder ``blocks.png/``, a symbolic link, a FIFO, a mount point.

    Only regular files are ever replaced by :func:`atomic_output_dir`; anything else in the way is the
    user's and is never touched.

    Raises:
        LayerProbeError: naming the entry and what it is.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(d, "blocks.png"))
    >>> check_output_names(d, ["comparison.json", "blocks.png"])
    Traceback (most recent call last):
    ...
    layerprobe.errors.LayerProbeError: .../blocks.png: cannot write output file: it exists and is a directory, expected a file name (it is never replaced)
    """
    directory = os.fspath(directory)
    for name in names:
        target = os.path.join(directory, name)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LayerProbeError(f"cannot write output file ({_one_line(exc.strerror or exc)})", path=target) from None
        import stat

        if not stat.S_ISREG(st.st_mode):
            raise LayerProbeError(f"cannot write output file: it exists and is {_kind_of(st)}, expected a file name "
                                  f"(it is never replaced)", path=target)


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM for the few renames that swap the results in (or put the old files back).

    Yields the list of signals that arrived meanwhile; each is delivered when the block ends (after the
    caller has put everything back), so that a signal can never cut a swap in half.
    """
    import signal
    import threading

    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # Python handlers only run in the main thread
        yield pending
        return
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    for sig in (int(signal.SIGINT), int(signal.SIGTERM)):
        try:
            handler = signal.getsignal(sig)
            if handler not in (signal.SIG_IGN, None):
                previous[sig] = signal.signal(sig, hold)
        except (ValueError, OSError):  # pragma: no cover - not settable here
            pass
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            first = pending[0]
            handler = previous[first]
            if callable(handler):
                handler(first, None)  # KeyboardInterrupt, or the CLI's SIGTERM exception
            else:
                signal.raise_signal(first)  # the default action
            raise LayerProbeError(f"interrupted by signal {first} while moving the results in; nothing was changed")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, names: Iterable[str] = ()) -> Iterator[str]:
    """Build a set of output files in a temporary folder, then move them into ``path`` together.

    The results are written into the yielded folder (a short-named hidden folder inside ``path``,
    so that ``path`` may be a mount point and any legal file name works). When the block succeeds,
    every written file must land on a missing name or replace a regular file of ``path``; a folder,
    link or special file in the way is refused before anything changes. Then each file replaced is
    first moved aside, and the new files are renamed in, with SIGINT/SIGTERM held; if any step
    fails, the files moved so far are taken back out and the old ones put back. Nothing else in
    ``path`` is ever moved, copied or deleted (mount points and folders inside it included).

    On any exception (SIGINT, SIGTERM via the CLI, disk full, a folder named like an output file)
    ``path`` is left exactly as it was, a folder created for the run is removed again, and the
    temporary folder is removed.

    Args:
        path: the output folder; created if missing.
        names: the files the block will write, when known: checked with :func:`check_output_names`
            before the block runs (they are checked again after it, whatever was written).

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
    ensure_writable_dir(os.path.dirname(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise LayerProbeError("cannot write to output directory: it exists but is a file, expected a directory",
                              path=path)
    check_output_names(path, names)
    created = False
    tmp = ""
    try:
        if not os.path.isdir(path):
            os.mkdir(path)
            created = True
        tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=path)
        new = os.path.join(tmp, "n")  # the results, as written by the block
        aside = os.path.join(tmp, "o")  # the user's files that the results replace, until the swap is complete
        os.mkdir(new)
        os.mkdir(aside)
    except BaseException as exc:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        if not isinstance(exc, OSError):
            raise
        raise LayerProbeError(f"cannot write to output directory ({_one_line(exc.strerror or exc)}); it was left "
                              f"as it was", path=path) from None
    done: list[tuple[str, bool]] = []  # (name, whether an old file was moved aside), in order
    body_done = committed = False
    try:
        yield new
        body_done = True
        written = sorted(os.listdir(new))
        for name in written:
            if not os.path.isfile(os.path.join(new, name)) or os.path.islink(os.path.join(new, name)):
                raise LayerProbeError("output is not a plain file (only files are written)",
                                      path=os.path.join(path, name))
        check_output_names(path, written)  # again: what was written, and whatever changed meanwhile
        with _signals_held() as pending:
            try:
                for name in written:
                    target = os.path.join(path, name)
                    had_old = os.path.lexists(target)
                    if had_old:
                        os.rename(target, os.path.join(aside, name))
                    done.append((name, had_old))
                    os.rename(os.path.join(new, name), target)
            except BaseException:
                _undo(path, new, aside, done)
                raise
            if pending:  # a signal arrived during the swap: put everything back, then let it act
                _undo(path, new, aside, done)
            else:
                committed = True  # the results are in; the old versions of the replaced files go
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        if committed:  # the results are complete: only our clean-up was cut short
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _remove_temporary(tmp, aside)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty: nothing but our own folder was ever in it
        if isinstance(exc, LayerProbeError) and exc.path and exc.path.startswith(tmp + os.sep):
            # name the file the user asked for, not its place in the temporary folder
            raise LayerProbeError(exc.message, path=os.path.join(path, os.path.relpath(exc.path, new))) from None
        if isinstance(exc, OSError) and (body_done or _about_output(exc, tmp)):
            # disk full while writing the output or swapping it in: one line, ``path`` as it was (an error of
            # the caller's own work inside the block, e.g. a missing input file, propagates unchanged)
            raise LayerProbeError(f"cannot write to output directory ({_one_line(exc.strerror or exc)}); it was "
                                  f"left as it was", path=path) from None
        raise


def _undo(path: str, new: str, aside: str, done: list[tuple[str, bool]]) -> None:
    """Take the results moved so far back out of ``path`` and put the user's files back, newest first.

    Every entry is tried even when one fails; a file that could not be put back stays in ``aside``,
    which :func:`_remove_temporary` then reports instead of deleting.
    """
    for name, had_old in reversed(done):
        target = os.path.join(path, name)
        arrived = not os.path.lexists(os.path.join(new, name))
        with contextlib.suppress(OSError):
            if had_old and os.path.lexists(os.path.join(aside, name)):
                os.rename(os.path.join(aside, name), target)  # the old file back, over the result if it arrived
            elif arrived and os.path.lexists(target):
                os.rename(target, os.path.join(new, name))  # a new name: take the result out again


def _remove_temporary(tmp: str, aside: str) -> None:
    """Remove the temporary folder, unless a file of the user's is still in it (a restore that failed):
    then it stays, and the error says where."""
    import shutil

    try:
        kept = os.listdir(aside)
    except FileNotFoundError:
        kept = []
    except OSError:
        kept = ["?"]
    if kept:
        raise LayerProbeError(f"cannot put back {len(kept)} earlier file(s) after a failed write; they are kept in "
                              f"this folder (move them back by hand)", path=aside)
    shutil.rmtree(tmp, ignore_errors=True)


def write_output_set(path: str | os.PathLike, writers: Mapping[str, Callable[[str], object]]) -> list[str]:
    """Write a set of files into the directory ``path`` together: the one output-set writer.

    ``writers[name](file)`` writes one file into a temporary directory; the set appears
    together, or not at all (:func:`atomic_output_dir`). Returns the final paths, in order.
    """
    with atomic_output_dir(path, list(writers)) as tmp:  # a folder named like one of them: refused first
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
            prefix=_TMP_PREFIX, suffix=".tmp", dir=directory
        )
    except OSError as exc:  # no inodes left, say: name the user's file, never the temporary one
        raise LayerProbeError(f"cannot write output file ({_one_line(exc.strerror or exc)}); nothing was written",
                              path=path) from None
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
