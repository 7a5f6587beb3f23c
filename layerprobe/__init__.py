"""layerprobe: which transformer blocks changed during fine-tuning, and which could be frozen."""

from ._version import __version__
from .blocks import Blocks, BlockRef, find_blocks
from .capture import capture
from .errors import LayerProbeError

__all__ = ["__version__", "Blocks", "BlockRef", "LayerProbeError", "capture", "find_blocks"]
