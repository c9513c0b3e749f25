"""tllib-tune: transfer learning with ConvBN blocks in Train / Eval / Tune / Deploy modes."""

from .modules import ConvBN, LinearBN, Mode, convert_convbn, get_modes, inspect_convbn, set_mode, using_mode

__version__ = "0.1.0"

__all__ = [
    "ConvBN",
    "LinearBN",
    "Mode",
    "convert_convbn",
    "get_modes",
    "inspect_convbn",
    "set_mode",
    "using_mode",
    "__version__",
]
