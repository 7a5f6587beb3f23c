"""One error type for bad input, shared by every stage.

The CLI turns a :class:`LayerProbeError` into a one-line message on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re

__all__ = ["LayerProbeError", "LayerProbeTypeError", "LayerProbeWarning", "one_line", "printable", "strip_ansi"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (libraries colour their messages).

    >>> strip_ansi("\x1b[31mred\x1b[0m")
    'red'
    """
    return _ANSI.sub("", text)


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` as one line for an error message: colour codes dropped, whitespace collapsed,
    cut to ``limit`` characters (with ``...``) when given.

    >>> one_line("bad   header  here", limit=12)
    'bad heade...'
    """
    s = " ".join(_ANSI.sub("", str(text)).split())
    return s if limit is None or len(s) <= limit else s[: limit - 3] + "..."


class LayerProbeError(ValueError):
    """Bad input: a file, an argument or data that layerprobe cannot use.

    Args:
        message: what was found and what was expected.
        path: the file the problem is about, if any; it prefixes the message.

    >>> str(LayerProbeError("not a checkpoint", path="x.pt"))
    'x.pt: not a checkpoint'
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class LayerProbeTypeError(LayerProbeError, TypeError):
    """An argument of the wrong type (a plain string where a list of texts was expected, ``None``
    for a model): a :class:`LayerProbeError`, and a :class:`TypeError` for code that catches those.

    >>> isinstance(LayerProbeTypeError("texts must be a list of strings"), (TypeError, ValueError))
    True
    """


class LayerProbeWarning(UserWarning):
    """Something the user should know about a result that is still given (an adapter applied to
    another base than the one its config names). The CLI prints it as one line,
    ``layerprobe: warning: ...``; the same text is kept in the result's notes.
    """


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters escaped: a file name holding a newline or an escape code
    keeps the error message on one line and never drives the terminal.

    >>> printable("we\\nird\\x1b[31m.pt: not found")
    'we\\\\nird\\\\x1b[31m.pt: not found'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
