"""Tune mode as torch.compile should see it: the fold in plain operations, recomputed in backward.

Under ``torch.compile`` the Tune autograd function (:mod:`.tune`) is an opaque region to inductor: the fold
and the elementwise tail around the convolution cannot fuse. Here the fold (:func:`.fold.fold_bn`, in
ordinary differentiable operations) runs inside a non-reentrant :func:`torch.utils.checkpoint.checkpoint`
region, which the compiler tags "must recompute": the partitioner then rebuilds W' from W in the backward
graph instead of saving it, so the compiled step keeps what compiled Deploy keeps. Only
:class:`.convbn.ConvBNBase` calls it, and only while compiling; eager Tune is untouched. The convolution
(or linear map) itself stays outside the region, so its output is never recomputed.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .autocast import autocast_dtype, autocast_off
from .fold import as_dtype, fold_bn
from .ops import OpSpec, op_forward

__all__ = ["compiled_tune", "is_compiling"]


def _is_compiling_function() -> Callable[[], bool]:
    """torch.compiler.is_compiling (torch >= 2.3), or dynamo's own on older releases."""
    function = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if function is None:  # pragma: no cover - torch < 2.3
        from torch import _dynamo

        function = _dynamo.is_compiling
    return function


#: True while torch.compile traces the code that calls it (and False in eager code).
is_compiling = _is_compiling_function()


def compiled_tune(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    spec: OpSpec,
) -> Tensor:
    """Tune's forward for compiled code: the fold recomputed in backward (a checkpointed region), then
    the operator in the dtype autocast would choose, as eager Tune's "weight" strategy computes it."""
    compute_dtype = autocast_dtype(x)
    folded_w, folded_b = checkpoint(
        fold_bn, weight, bias, gamma, beta, running_mean, running_var, eps, use_reentrant=False
    )
    with autocast_off(x):
        x = as_dtype(x, compute_dtype)
        return op_forward(spec, x, as_dtype(folded_w, compute_dtype), as_dtype(folded_b, compute_dtype))
