"""layerprobe: which transformer blocks changed during fine-tuning, and which could be frozen.

The public names are lazy attributes (PEP 562): ``import layerprobe`` loads no torch and no
transformers; ``layerprobe.compare`` etc. import their module on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from layerprobe._version import __version__

#: public name -> the submodule that defines it
_LAZY = {
    "BlockRef": "layerprobe.model.blocks", "Blocks": "layerprobe.model.blocks", "find_blocks": "layerprobe.model.blocks",
    "capture": "layerprobe.model.capture",
    "Comparison": "layerprobe.results.comparison",
    "compare": "layerprobe.comparison.compare",
    "LayerProbeError": "layerprobe.errors",
    "freeze": "layerprobe.freezing.apply", "parameter_names": "layerprobe.freezing.apply", "unfreeze": "layerprobe.freezing.apply",
    "Recommendation": "layerprobe.freezing.rule", "Thresholds": "layerprobe.freezing.rule", "recommend": "layerprobe.freezing.rule",
    "Snapshot": "layerprobe.snapshot.take", "take_snapshot": "layerprobe.snapshot.take",
    "ProbeOptions": "layerprobe.options", "CKAOptions": "layerprobe.options",
    "load_hf_model": "layerprobe.io.hf_model",
    "FreezePolicy": "layerprobe.freezing.policy", "AutoFreezePolicy": "layerprobe.freezing.policy", "Tracker": "layerprobe.tracking.tracker",
    "LayerProbeCallback": "layerprobe.integrations.hf", "PrefixCache": "layerprobe.freezing.prefix_cache",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from layerprobe.comparison.compare import compare  # noqa: F401
    from layerprobe.errors import LayerProbeError  # noqa: F401
    from layerprobe.freezing.apply import freeze, parameter_names, unfreeze  # noqa: F401
    from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy  # noqa: F401
    from layerprobe.freezing.prefix_cache import PrefixCache  # noqa: F401
    from layerprobe.freezing.rule import Recommendation, Thresholds, recommend  # noqa: F401
    from layerprobe.integrations.hf import LayerProbeCallback  # noqa: F401
    from layerprobe.io.hf_model import load_hf_model  # noqa: F401
    from layerprobe.model.blocks import BlockRef, Blocks, find_blocks  # noqa: F401
    from layerprobe.model.capture import capture  # noqa: F401
    from layerprobe.options import CKAOptions, ProbeOptions  # noqa: F401
    from layerprobe.results.comparison import Comparison  # noqa: F401
    from layerprobe.snapshot.take import Snapshot, take_snapshot  # noqa: F401
    from layerprobe.tracking.tracker import Tracker  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layerprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    # a submodule named like its function (compare, capture, freeze, recommend) must not shadow it
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``layerprobe.compare`` (and capture, freeze, recommend) the function when the
    submodule of the same name is imported: the import system sets the submodule as an attribute
    of the package, as the old eager ``from .compare import compare`` used to overwrite."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name, "").rsplit(".", 1)[-1] == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
