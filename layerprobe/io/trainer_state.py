"""A Trainer checkpoint's ``trainer_state.json``: how far the run had gone.

Optional information: an unreadable, huge or deeply nested file is ignored (read bounded through
:func:`~layerprobe.io.files.load_json`), never a crash.
"""

from __future__ import annotations

import os

from layerprobe.errors import LayerProbeError
from layerprobe.io.files import load_json

__all__ = ["TRAINER_STATE", "progress_text", "run_progress"]

TRAINER_STATE = "trainer_state.json"


def _trainer_state(path: str) -> dict | None:
    f = os.path.join(path, TRAINER_STATE) if os.path.isdir(path) else None
    if f is None or not os.path.isfile(f):
        return None
    try:  # optional information: an unreadable, huge or deeply nested file is ignored, never a crash
        state = load_json(f, "trainer_state.json")
    except LayerProbeError:
        return None
    return state if isinstance(state, dict) else None


def run_progress(path: str | os.PathLike) -> dict | None:
    """How far the run had gone at a Trainer checkpoint, from its ``trainer_state.json``.

    Returns ``{"step", "max_steps", "fraction"}`` (``fraction`` None without ``max_steps``), or
    None when the directory holds no readable trainer state.
    """
    state = _trainer_state(os.fspath(path))
    step = None if state is None else state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    total = state.get("max_steps") if state is not None else None
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= step and total > 0 else None
    return {"step": step, "max_steps": total, "fraction": step / total if total else None}


def progress_text(progress: dict) -> str:
    """``"step 250 of 1250 (20% of the run)"`` (or ``"step 250"`` without max_steps).

    >>> progress_text({"step": 250, "max_steps": 1250, "fraction": 0.2})
    'step 250 of 1250 (20% of the run)'
    """
    if progress.get("max_steps"):
        return f"step {progress['step']} of {progress['max_steps']} ({progress['fraction']:.0%} of the run)"
    return f"step {progress['step']}"
