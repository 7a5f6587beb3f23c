"""One error type for bad input, shared by every stage.

The CLI turns a :class:`LayerProbeError` into a one-line message on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


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
