"""Building blocks: ConvBN/LinearBN with switchable modes and the helpers that walk a model."""

from .convbn import ConvBN, ConvBNBase, LinearBN, Mode, TuneFunction
from .modes import get_modes, iter_blocks, set_mode, using_mode

__all__ = [
    "ConvBN",
    "ConvBNBase",
    "LinearBN",
    "Mode",
    "TuneFunction",
    "get_modes",
    "iter_blocks",
    "set_mode",
    "using_mode",
]
