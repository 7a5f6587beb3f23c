"""layerprobe: which transformer blocks changed during fine-tuning, and which could be frozen."""

from ._version import __version__
from .blocks import BlockRef, Blocks, find_blocks
from .capture import capture
from .compare import Comparison, compare
from .errors import LayerProbeError
from .freeze import freeze, parameter_names, unfreeze
from .recommend import Recommendation, Thresholds, recommend
from .snapshot import Snapshot, take_snapshot
from .track import FreezePolicy, LayerProbeCallback, Tracker

__all__ = [
    "__version__", "BlockRef", "Blocks", "Comparison", "LayerProbeError", "Recommendation", "Snapshot",
    "Thresholds", "capture", "compare", "find_blocks", "freeze", "parameter_names", "recommend",
    "take_snapshot", "unfreeze", "FreezePolicy", "LayerProbeCallback", "Tracker",
]
