"""Building blocks: ConvBN/LinearBN with switchable modes, the fold math, helpers that walk a model."""

from .classifier import Classifier
from .convbn import ConvBN, ConvBNBase, LinearBN, Mode, TuneFunction, convbn_unsupported_reason
from .convert import ConversionReport, convert_convbn, inspect_convbn
from .fold import bn_scale, fold_bn, unfold_bn, unfold_bn_beta
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
    "convbn_unsupported_reason",
    "bn_scale",
    "fold_bn",
    "unfold_bn",
    "unfold_bn_beta",
    "get_modes",
    "iter_blocks",
    "set_mode",
    "using_mode",
]
