"""See through training wrappers: DDP, DataParallel, FSDP, ``torch.compile`` and PEFT.

:func:`unwrap` returns the model users mean (the one whose parameter names match a plain
checkpoint), and :func:`effective_parameters` lists its parameters by their plain names, with a
PEFT/LoRA adapter's update added to each base weight one tensor at a time (the merged model is
never built) and FSDP2-sharded parameters gathered to full tensors. Parameters whose data is not
in memory (``device_map`` disk/CPU offload puts them on the meta device) are reported, not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

__all__ = ["effective_parameters", "full_tensor", "has_meta_parameters", "input_device", "is_peft", "lora_layers",
           "unwrap"]

#: module attributes that hold the wrapped model: DDP/DataParallel/FSDP1 (``module``), torch.compile (``_orig_mod``)
_WRAPPER_ATTRS = ("_orig_mod", "module")


def is_peft(model: nn.Module) -> bool:
    """A ``peft.PeftModel`` (checked by duck type; peft is an optional extra)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / FSDP(1) / ``torch.compile`` / PEFT wrappers.

    A PEFT model unwraps to its base model *with the adapter layers in place* (so a forward pass
    applies the adapter); :func:`effective_parameters` names its weights as in the plain model.

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> unwrap(torch.nn.DataParallel(m)) is m
    True
    """
    seen = 0
    while seen < 8:  # a compiled DDP model is two wrappers deep; never loop forever
        seen += 1
        if is_peft(model):
            model = cast(Any, model).get_base_model()  # peft.PeftModel (duck-typed above)
            continue
        cls = type(model).__name__
        inner = None
        if cls == "OptimizedModule":
            inner = getattr(model, "_orig_mod", None)
        elif cls in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def has_meta_parameters(model: nn.Module) -> bool:
    """Whether some parameter has no data here (``device_map`` offload, ``init_empty_weights``)."""
    return any(p.is_meta for p in model.parameters())


def input_device(model: nn.Module) -> torch.device:
    """Where probe inputs go: the first parameter not on the meta device (offloaded models: CPU)."""
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules()
            if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight") and hasattr(m, "active_adapters")}


def _saved_copies(model: nn.Module) -> dict[str, nn.Module]:  # peft ModulesToSaveWrapper (a trained head)
    return {path: m for path, m in model.named_modules()
            if hasattr(m, "original_module") and hasattr(m, "modules_to_save")}


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)  # FSDP2 / DTensor: gather the shards
    return full() if callable(full) else t


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(plain name, tensor)`` per parameter, detached; LoRA updates added, DTensors gathered.

    Names are those of the model without the adapter (``query.weight``, not
    ``query.base_layer.weight``); adapter-only tensors (``lora_A``/``lora_B``) are not listed.
    Tensors are yielded one at a time; a yielded LoRA weight is a new tensor (base + B·A·scale).
    """
    lora = _lora_layers(model)
    saved = _saved_copies(model)
    for name, p in model.named_parameters():
        owner = next((path for path in lora if name.startswith(path + ".")), None)
        if owner is not None:
            rest = name[len(owner) + 1:]
            if not rest.startswith("base_layer."):
                continue  # lora_A / lora_B / lora_embedding_*: the update, folded in below
            pname = rest[len("base_layer."):]
            t = _full(p.detach())
            layer: Any = lora[owner]  # a peft LoRA layer, duck-typed by _lora_layers
            if pname == "weight" and not getattr(layer, "merged", False):
                for adapter in layer.active_adapters:
                    if adapter in getattr(layer, "lora_A", {}) or adapter in getattr(layer, "lora_embedding_A", {}):
                        with torch.no_grad():
                            t = t + layer.get_delta_weight(adapter).to(t.dtype)
            yield f"{owner}.{pname}", t
            continue
        wrapper = next((path for path in saved if name.startswith(path + ".")), None)
        if wrapper is not None:
            rest = name[len(wrapper) + 1:]
            if rest.startswith("modules_to_save."):
                yield f"{wrapper}.{rest.split('.', 2)[2]}", _full(p.detach())
            continue  # original_module: the untrained copy
        yield name, _full(p.detach())


#: public names of the helpers other stages use: the whole tensor of a (DTensor-)sharded parameter
#: (a collective under FSDP: every rank must call it), and a model's peft LoRA layers by path
full_tensor = _full
lora_layers = _lora_layers
