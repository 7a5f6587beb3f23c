"""Weight inputs as the drift functions take them: a tensor/array, a mapping or a sequence of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import torch

from layerprobe.errors import LayerProbeError
from layerprobe.metrics.core import Weight, Weights

__all__ = []


def _as_tensor(t: Weight, name: str) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach()
    try:
        arr = np.asarray(t)
    except (TypeError, ValueError) as exc:
        raise LayerProbeError(f"parameter {name!r}: not an array or tensor ({type(t).__name__})") from exc
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise LayerProbeError(f"parameter {name!r}: not numeric, dtype={arr.dtype}")
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _pairs(w0: Weights, w1: Weights) -> list[tuple[str, Weight, Weight]]:
    """Normalise (tensor | mapping | sequence) pairs to [(name, t0, t1)], validating keys."""
    if isinstance(w0, Mapping) or isinstance(w1, Mapping):
        if not (isinstance(w0, Mapping) and isinstance(w1, Mapping)):
            raise LayerProbeError(
                f"w0 and w1 must both be mappings, got {type(w0).__name__} and {type(w1).__name__}"
            )
        k0, k1 = list(w0.keys()), set(w1.keys())
        missing = [k for k in k0 if k not in k1]
        extra = sorted(set(k1) - set(k0), key=str)
        if missing or extra:
            raise LayerProbeError(
                "w0 and w1 have different parameter names: "
                f"missing from w1: {missing}, extra in w1: {extra}"
            )
        return [(str(k), w0[k], w1[k]) for k in k0]
    if isinstance(w0, (torch.Tensor, np.ndarray)) or isinstance(w1, (torch.Tensor, np.ndarray)):
        return [("<tensor>", cast(Weight, w0), cast(Weight, w1))]
    if isinstance(w0, Sequence) and isinstance(w1, Sequence) and not isinstance(w0, str):
        if len(w0) != len(w1):
            raise LayerProbeError(f"w0 and w1 have different lengths: {len(w0)=} vs {len(w1)=}")
        return [(f"[{i}]", a, b) for i, (a, b) in enumerate(zip(w0, w1))]
    return [("<tensor>", w0, w1)]
