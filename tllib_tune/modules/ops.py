"""The operator a block folds BatchNorm into (a convolution or a linear map): its description, its
forward through the functional form autocast knows, its backward, and the shapes of per-channel vectors.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OpSpec", "LINEAR", "op_forward", "op_backward", "op_output_numel", "output_shape", "reduce_dims"]


class OpSpec(NamedTuple):
    """How to call the operator: ``kind`` "conv" (with its geometry) or "linear" (see :data:`LINEAR`).

    ``padding`` is what the convolution itself pads (symmetric, per spatial dimension); padding that a
    convolution cannot express (asymmetric, non-zero modes, TF "same") is applied to the input first.
    """

    kind: str
    stride: Sequence[int] = ()
    padding: Sequence[int] = ()
    dilation: Sequence[int] = ()
    groups: int = 1

    @property
    def is_linear(self) -> bool:
        return self.kind == "linear"


#: The spec of a linear operator (nothing to describe beyond the weight's shape).
LINEAR = OpSpec("linear")

_CONV_FUNCTIONS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def op_forward(spec: OpSpec, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The operator through its functional form, which autocast casts as it casts nn.Conv*d and nn.Linear
    (``torch.convolution`` itself is not on autocast's lists: Deploy would silently stay in float32)."""
    if spec.kind == "linear":
        return F.linear(x, weight, bias)
    conv = _CONV_FUNCTIONS[weight.dim()]
    return conv(x, weight, bias, spec.stride, spec.padding, spec.dilation, spec.groups)


def op_backward(
    spec: OpSpec, grad: Tensor, x: Tensor, weight: Tensor, mask: Tuple[bool, bool, bool]
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of the operator's input, weight and bias, each computed only where ``mask`` asks."""
    if spec.kind == "linear":
        grad_x = grad @ weight if mask[0] else None
        grad_w = grad.t() @ x if mask[1] else None
        grad_b = grad.sum(0) if mask[2] else None
        return grad_x, grad_w, grad_b
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        [weight.shape[0]],
        list(spec.stride),
        list(spec.padding),
        list(spec.dilation),
        False,
        [0] * len(spec.stride),
        spec.groups,
        list(mask),
    )
    return (grad_x if mask[0] else None, grad_w if mask[1] else None, grad_b if mask[2] else None)


def op_output_numel(spec: OpSpec, x: Tensor, weight: Tensor) -> int:
    """Number of elements the operator produces for input ``x`` (without running it)."""
    numel = x.shape[0] * weight.shape[0]
    if spec.kind == "linear":
        return numel
    for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], spec.stride, spec.padding, spec.dilation):
        numel *= max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)
    return numel


def output_shape(ndim: int) -> Tuple[int, ...]:
    """View shape of a per-channel vector broadcast against an operator output of ``ndim`` dimensions."""
    return _OUTPUT_SHAPES[ndim] if ndim < len(_OUTPUT_SHAPES) else (1, -1) + (1,) * (ndim - 2)


def reduce_dims(ndim: int) -> Tuple[int, ...]:
    """The dimensions of an operator output to sum over for a per-channel total."""
    return _REDUCE_DIMS[ndim] if ndim < len(_REDUCE_DIMS) else (0,) + tuple(range(2, ndim))


_OUTPUT_SHAPES = [(-1,), (-1,)] + [(1, -1) + (1,) * (n - 2) for n in range(2, 6)]
_REDUCE_DIMS = [(), (0,)] + [(0,) + tuple(range(2, n)) for n in range(2, 6)]
