"""Backward-compatible home of the tracking API (moved).

:class:`~layerprobe.tracking.tracker.Tracker` lives in :mod:`layerprobe.tracking.tracker`, the freeze policies in
:mod:`layerprobe.freezing.policy` and the Trainer callback in :mod:`layerprobe.integrations.hf`; this module
re-exports them (``LayerProbeCallback`` lazily, so importing it does not import the Trainer).
"""

from __future__ import annotations

from typing import Any

from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy
from layerprobe.tracking.tracker import (
    COLUMNS,
    DEFAULT_EVERY_N_STEPS,
    DEFAULT_MAX_LENGTH,
    DEFAULT_PROBE_SIZE,
    FREEZE_LOG_CSV,
    TRAJECTORY_CSV,
    Tracker,
)

__all__ = ["COLUMNS", "DEFAULT_EVERY_N_STEPS", "DEFAULT_MAX_LENGTH", "DEFAULT_PROBE_SIZE", "FREEZE_LOG_CSV",
           "TRAJECTORY_CSV", "AutoFreezePolicy", "FreezePolicy", "LayerProbeCallback", "Tracker"]  # noqa: F822


def __getattr__(name: str) -> Any:
    if name == "LayerProbeCallback":
        from layerprobe.integrations.hf import LayerProbeCallback

        return LayerProbeCallback
    raise AttributeError(f"module 'layerprobe.track' has no attribute {name!r}")
