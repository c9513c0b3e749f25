"""The smallest feature map a network produces: BatchNorm with batch statistics (Train mode, In-Place
ABN) needs more than one value per channel, so a batch of one image whose last map is 1 x 1 cannot train.
Scripts check this up front instead of failing inside BatchNorm after setup."""

from __future__ import annotations

from typing import List

import torch
from torch import nn


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
