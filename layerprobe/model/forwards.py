"""Replacing a module's ``forward`` for a while, as an instance attribute, and putting it back.

An instance ``forward`` shadows the class's without touching the ``state_dict`` or the hooks others
registered on the module (they still fire around it). Another library may have set one before us
(accelerate's device hooks do): :func:`set_forward` returns it and :func:`restore_forward` puts it back,
so patches nest when undone in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["original_forward", "restore_forward", "set_forward"]


def original_forward(mod: nn.Module) -> Callable[..., Any]:
    """The forward a call of ``mod`` runs now: its instance ``forward`` if one is set, else the class's, bound."""
    previous = mod.__dict__.get("forward")
    return previous if previous is not None else type(mod).forward.__get__(mod)


def set_forward(mod: nn.Module, forward: Callable[..., Any]) -> Any:
    """Make ``forward`` the module's forward; returns the instance ``forward`` it replaces (None if none)."""
    previous = mod.__dict__.get("forward")
    mod.forward = forward
    return previous


def restore_forward(mod: nn.Module, previous: Any) -> None:
    """Undo :func:`set_forward`: put back ``previous`` (its return value), or the class's forward if None."""
    if previous is None:
        mod.__dict__.pop("forward", None)
    else:
        mod.forward = previous
