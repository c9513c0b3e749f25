"""The smallest feature map a network produces: BatchNorm with batch statistics (Train mode, In-Place
ABN) needs more than one value per channel, so a batch of one image whose last map is 1 x 1 cannot train.
:func:`batch_statistics_problem` is the one check the fine-tuning runner and the benchmarks make up front,
instead of failing inside BatchNorm after setup."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

__all__ = ["BATCH_STATISTICS_MODES", "smallest_feature_map", "batch_statistics_problem"]

#: The modes whose BatchNorm normalises with the batch's own statistics.
BATCH_STATISTICS_MODES = ("train", "inplace-abn")


def smallest_feature_map(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Values per channel and image in the smallest output of any convolution of ``model`` for a square
    input of ``input_size`` pixels (1 for a 1 x 1 map): with batch statistics, the batch times this must
    exceed 1. One forward of a zero image on the model's device, with running statistics and no
    gradients; the model's training flag is restored."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    sizes: List[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _inputs, out: sizes.append(out[0, 0].numel()))
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    if not hooks:
        raise ValueError(f"{type(model).__name__} has no convolution to measure a feature map of")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return min(sizes)


def batch_statistics_problem(
    model: nn.Module,
    batch_sizes: Iterable[int],
    input_sizes: Iterable[int],
    modes: Iterable[str],
    *,
    name: Optional[str] = None,
    batch_arg: str = "batch_size",
    input_arg: str = "input_size",
) -> Optional[str]:
    """Why ``model`` cannot train on some (batch size, input size) in one of ``modes``, or None.

    Only :data:`BATCH_STATISTICS_MODES` matter (the others use running statistics). The message names
    the arguments as `batch_arg` and `input_arg` (in backquotes, for a command line to turn into its
    flags) and the model as ``name``; one forward per input size measures the smallest map."""
    used = [m for m in BATCH_STATISTICS_MODES if m in set(modes)]
    if not used:
        return None
    smallest: Dict[int, int] = {}
    for input_size in input_sizes:
        for batch_size in batch_sizes:
            if input_size not in smallest:
                smallest[input_size] = smallest_feature_map(model, input_size)
            if batch_size * smallest[input_size] > 1:
                continue
            return (
                f"`{batch_arg}` {batch_size} at `{input_arg}` {input_size}: BatchNorm with batch statistics "
                f"({' and '.join(used)} mode) needs more than one value per channel, but "
                f"{name or type(model).__name__}'s smallest feature map holds {smallest[input_size]} per "
                f"image; use `{batch_arg}` 2 or more, or a larger `{input_arg}`"
            )
    return None
