"""layerprobe: which transformer blocks changed during fine-tuning, and which could be frozen.

``__all__`` below is the public API. The names are lazy attributes (PEP 562): ``import layerprobe``
loads no torch and no transformers; ``layerprobe.compare`` etc. import their module on first use.
The implementation lives in subpackages by stage (``docs/architecture.md``); their own
``__all__`` lists are what other stages, the analyses and the benchmarks may use.
"""

import importlib as _importlib
import typing as _typing

from layerprobe._version import __version__

__all__ = [
    "AutoFreezePolicy",
    "BlockRef",
    "Blocks",
    "CKAOptions",
    "Comparison",
    "FreezePolicy",
    "LayerProbeCallback",
    "LayerProbeError",
    "PrefixCache",
    "ProbeOptions",
    "Recommendation",
    "Snapshot",
    "Thresholds",
    "Tracker",
    "__version__",
    "capture",
    "compare",
    "find_blocks",
    "freeze",
    "load_hf_model",
    "parameter_names",
    "recommend",
    "take_snapshot",
    "unfreeze",
]

#: public name -> the module that defines it
_LAZY = {
    "BlockRef": "layerprobe.model.blocks", "Blocks": "layerprobe.model.blocks", "find_blocks": "layerprobe.model.blocks",
    "capture": "layerprobe.model.capture",
    "load_hf_model": "layerprobe.io.hf_model",
    "Snapshot": "layerprobe.snapshot.take", "take_snapshot": "layerprobe.snapshot.take",
    "freeze": "layerprobe.freezing.apply", "parameter_names": "layerprobe.freezing.apply",
    "unfreeze": "layerprobe.freezing.apply",
    "Recommendation": "layerprobe.freezing.rule", "Thresholds": "layerprobe.freezing.rule",
    "recommend": "layerprobe.freezing.rule",
    "FreezePolicy": "layerprobe.freezing.policy", "AutoFreezePolicy": "layerprobe.freezing.policy",
    "PrefixCache": "layerprobe.freezing.prefix_cache",
    "Comparison": "layerprobe.results.comparison",
    "compare": "layerprobe.comparison.compare",
    "Tracker": "layerprobe.tracking.tracker",
    "LayerProbeCallback": "layerprobe.integrations.hf",
    "LayerProbeError": "layerprobe.errors",
    "ProbeOptions": "layerprobe.options", "CKAOptions": "layerprobe.options",
}

if _typing.TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from layerprobe.comparison.compare import compare
    from layerprobe.errors import LayerProbeError
    from layerprobe.freezing.apply import freeze, parameter_names, unfreeze
    from layerprobe.freezing.policy import AutoFreezePolicy, FreezePolicy
    from layerprobe.freezing.prefix_cache import PrefixCache
    from layerprobe.freezing.rule import Recommendation, Thresholds, recommend
    from layerprobe.integrations.hf import LayerProbeCallback
    from layerprobe.io.hf_model import load_hf_model
    from layerprobe.model.blocks import BlockRef, Blocks, find_blocks
    from layerprobe.model.capture import capture
    from layerprobe.options import CKAOptions, ProbeOptions
    from layerprobe.results.comparison import Comparison
    from layerprobe.snapshot.take import Snapshot, take_snapshot
    from layerprobe.tracking.tracker import Tracker


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layerprobe' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
