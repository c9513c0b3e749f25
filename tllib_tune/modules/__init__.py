"""Building blocks: ConvBN/LinearBN with switchable modes and the helpers that walk a model."""

from .classifier import Classifier
from .convbn import ConvBN, ConvBNBase, LinearBN, Mode, TuneFunction
from .convert import ConversionReport, convert_convbn, inspect_convbn
from .inplace_abn import InPlaceABN, convert_to_inplace_abn
from .modes import get_modes, iter_blocks, set_mode, using_mode

__all__ = [
    "Classifier",
    "ConversionReport",
    "convert_convbn",
    "inspect_convbn",
    "InPlaceABN",
    "convert_to_inplace_abn",
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
