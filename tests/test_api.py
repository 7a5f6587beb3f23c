"""The public surface: ``layerprobe.__all__`` is the API, pinned here (as httpx's test_exported_members.py).

A name added to or removed from the API fails this test until it is added here on purpose.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import layerprobe

API = [
    "AutoFreezePolicy", "BlockRef", "Blocks", "CKAOptions", "Comparison", "FreezePolicy", "LayerProbeCallback",
    "LayerProbeError", "PrefixCache", "ProbeOptions", "Recommendation", "Snapshot", "Thresholds", "Tracker",
    "__version__", "capture", "compare", "find_blocks", "freeze", "load_hf_model", "parameter_names", "recommend",
    "take_snapshot", "unfreeze",
]


def test_all_is_pinned_and_sorted():
    assert layerprobe.__all__ == API
    assert layerprobe.__all__ == sorted(layerprobe.__all__)


def test_every_exported_name_resolves_to_what_its_module_defines():
    for name in API:
        value = getattr(layerprobe, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = importlib.import_module(layerprobe._LAZY[name])
        assert getattr(module, name) is value, name
        assert name in module.__all__, f"{name} is not in {module.__name__}.__all__"
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__ == module.__name__, f"{name} is defined in {value.__module__}"


def test_no_other_public_attributes_than_all_and_subpackages():
    for name in API:
        getattr(layerprobe, name)  # load everything
    extra = [n for n, v in vars(layerprobe).items()
             if not n.startswith("_") and n not in API
             and not (isinstance(v, types.ModuleType) and v.__name__ == f"layerprobe.{n}")]
    assert extra == []
    assert set(API) <= set(dir(layerprobe))


def test_functions_named_like_their_module_stay_functions():
    """No top-level module shares a public function's name, so importing a submodule never
    replaces ``layerprobe.compare`` (and capture, freeze, recommend) with a module."""
    code = ("import layerprobe.comparison.compare, layerprobe.model.capture, layerprobe.freezing.apply, "
            "layerprobe.freezing.rule, layerprobe as lp; "
            "print([type(getattr(lp, n)).__name__ for n in ('compare', 'capture', 'freeze', 'recommend')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['function', 'function', 'function', 'function']"
