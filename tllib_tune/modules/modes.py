"""Walk a model's ConvBN blocks: switch their modes, count them, switch temporarily."""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from torch import nn

from .convbn import ConvBNBase, Mode

__all__ = ["iter_blocks", "set_mode", "get_modes", "using_mode"]

Include = Union[None, str, Sequence[str]]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif name == pattern or name.startswith(pattern + "."):
            return True
    return False


def iter_blocks(model: nn.Module, include: Include = None) -> Iterator[Tuple[str, ConvBNBase]]:
    """Yield (qualified name, block) for every ConvBN/LinearBN in ``model``.

    ``include`` restricts the walk to sub-modules: a name prefix such as "backbone" or "layer4.1",
    a glob such as "layer[34].*", or a list of them. An ``include`` that matches no block is an error,
    so that a typo never silently leaves the model in its old mode.
    """
    patterns: Optional[List[str]] = [include] if isinstance(include, str) else include
    found = False
    for name, module in model.named_modules():
        if isinstance(module, ConvBNBase) and (patterns is None or _matches(name, patterns)):
            found = True
            yield name, module
    if patterns is not None and not found:
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise ValueError(
            f"include={include!r} matches no ConvBN block in {type(model).__name__}; "
            f"its top-level modules are: {children}"
        )


def _no_blocks(model: nn.Module) -> ValueError:
    """A model without ConvBN blocks would ignore any mode: say so, and how to get blocks."""
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    found = f"{norms} plain BatchNorm layer(s), which no mode changes" if norms else "no BatchNorm at all"
    return ValueError(
        f"{type(model).__name__} has no ConvBN block ({found}); convert it first with "
        "tllib_tune.convert_convbn(model), or build it with tllib_tune.models.get_model"
    )


def set_mode(model: nn.Module, mode: Union[str, Mode], include: Include = None) -> int:
    """Put every ConvBN block of ``model`` (or of the ``include`` part) in ``mode``; return how many.

    Parameters keep their identity, so an optimizer built before the switch stays valid. A model with
    no ConvBN block at all (a plain torchvision network, say) is an error rather than a silent no-op.
    """
    mode = Mode.parse(mode)
    count = 0
    for _, block in iter_blocks(model, include):
        block.mode = mode
        count += 1
    if count == 0:
        raise _no_blocks(model)
    return count


def get_modes(model: nn.Module, include: Include = None) -> Dict[str, int]:
    """Count the blocks in each mode, e.g. ``{"tune": 53}``."""
    counts: Dict[str, int] = {}
    for _, block in iter_blocks(model, include):
        counts[block.mode.value] = counts.get(block.mode.value, 0) + 1
    return counts


@contextmanager
def using_mode(model: nn.Module, mode: Union[str, Mode], include: Include = None) -> Iterator[nn.Module]:
    """Switch blocks to ``mode`` inside a ``with`` statement; each block gets its own mode back on exit."""
    mode = Mode.parse(mode)
    previous = [(block, block.mode) for _, block in iter_blocks(model, include)]
    if not previous:
        raise _no_blocks(model)
    try:
        for block, _ in previous:
            block.mode = mode
        yield model
    finally:
        for block, old in previous:
            block.mode = old
