"""The Tune autograd function: an operator with BatchNorm folded in on every call, which keeps only its
input for backward and recomputes the per-channel scale (and the folded weight) there.

Two strategies compute the same function: "weight" runs the operator once with ``W * s`` (the fold of
:mod:`.fold`), "output" runs it with ``W`` and normalises its output per channel. :func:`choose_strategy`
picks the cheaper one per call; each has its own backward helper below.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .autocast import autocast_off
from .fold import (
    as_dtype,
    bn_inv_std,
    channel_dot,
    fold_bias_backward,
    fold_bn,
    fold_dtype,
    fold_weight,
    fold_weight_backward,
    scale_of,
)
from .ops import OpSpec, op_backward, op_forward, op_output_numel, output_shape, reduce_dims

__all__ = ["TuneFunction", "choose_strategy", "tune_forward", "DOUBLE_BACKWARD_MESSAGE"]

Grads = Tuple[Optional[Tensor], ...]

#: What a second differentiation through tune mode raises (create_graph=True, then grad of a grad).
DOUBLE_BACKWARD_MESSAGE = (
    "a ConvBN block in tune mode cannot be differentiated twice: tune's backward (TuneFunction) is not "
    "itself differentiable. For higher-order gradients (create_graph=True) put the blocks in mode "
    "'eval', which computes the same function, e.g. with tllib_tune.using_mode(model, 'eval')"
)


def choose_strategy(
    spec: OpSpec, x: Tensor, weight: Tensor, compute_dtype: torch.dtype, requested: str = "auto"
) -> str:
    """Where Tune mode applies the BatchNorm scale: to the "weight" or to the "output".

    Both compute the same function and keep only the input for backward. Scaling the weight costs a few
    passes over the weight, scaling the output a few passes over the output; with ``requested="auto"``
    the smaller one wins (late ResNet stages have large weights and small outputs). The output is scaled
    only in float32 and float64 without autocast; otherwise the fold is done on the weight in float32,
    then cast, as the contract says, whatever was requested.
    """
    if compute_dtype != weight.dtype or weight.dtype not in (torch.float32, torch.float64):
        return "weight"
    if requested != "auto":
        return requested
    return "output" if op_output_numel(spec, x, weight) < weight.numel() else "weight"


def tune_forward(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    spec: OpSpec,
    strategy: str,
) -> Tensor:
    """Tune's forward for an ``x`` already in the compute dtype (shared by TuneFunction and no-grad calls)."""
    if strategy == "output":
        # the operator, then BatchNorm with the running statistics: one fused per-channel pass
        out = op_forward(spec, x, weight, bias)
        return F.batch_norm(out, running_mean, running_var, gamma, beta, False, 0.0, eps)
    folded_w, folded_b = fold_bn(weight, bias, gamma, beta, running_mean, running_var, eps)
    return op_forward(spec, x, as_dtype(folded_w, x.dtype), as_dtype(folded_b, x.dtype))


class TuneFunction(torch.autograd.Function):
    """Operator with BatchNorm folded in on the fly (the paper's Tune mode).

    ``apply(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec, compute_dtype, strategy)``.
    Keeps x (in ``compute_dtype``) and the module's own tensors for backward, nothing else: the folded
    weight is recomputed in backward. With ``strategy="weight"`` the operator runs once with ``W * s``
    (folded in float32, or float64 for float64 parameters, then cast to ``compute_dtype``); with
    ``strategy="output"`` it runs with W and its output is normalised per channel (and in backward the
    incoming gradient is scaled instead of the weight), which is cheaper where the output is smaller
    than the weight (see :func:`choose_strategy`). Every per-channel quantity is recomputed from the
    module's tensors, so backward sees exactly the function forward computed. Its backward is not
    differentiable: a double backward raises :data:`DOUBLE_BACKWARD_MESSAGE`.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        gamma: Optional[Tensor],
        beta: Optional[Tensor],
        running_mean: Tensor,
        running_var: Tensor,
        eps: float,
        spec: OpSpec,
        compute_dtype: torch.dtype,
        strategy: str = "weight",
    ) -> Tensor:
        input_dtype = x.dtype
        with autocast_off(x):
            x = as_dtype(x, compute_dtype)
            out = tune_forward(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec, strategy)
        # x and the module's own tensors, nothing else: Tune's activation memory is exactly Deploy's
        ctx.save_for_backward(x, weight, bias, gamma, running_mean, running_var)
        ctx.eps, ctx.spec, ctx.compute_dtype, ctx.input_dtype = eps, spec, compute_dtype, input_dtype
        ctx.strategy = strategy
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Grads:
        with torch.no_grad(), autocast_off(grad_out):
            grads = _backward(ctx, as_dtype(grad_out, ctx.compute_dtype))
        if torch.is_grad_enabled():  # create_graph=True: make a second differentiation fail, and say why
            grads = _refuse_double_backward(grads, ctx.saved_tensors)
        return grads + (None,) * 6


def _backward(ctx: Any, grad_out: Tensor) -> Grads:
    """(dx, dW, db, dgamma, dbeta) of the tune function, each only where autograd asks."""
    x, weight, bias, gamma, running_mean, running_var = ctx.saved_tensors
    need_x, need_w, need_b, need_gamma, need_beta = ctx.needs_input_grad[:5]
    dtype = fold_dtype(weight.dtype)
    inv_std = bn_inv_std(running_var, ctx.eps, dtype)
    scale = scale_of(gamma, inv_std)
    need = (need_x, need_w, need_gamma, need_b or need_beta or need_gamma)
    by_strategy = _backward_output if ctx.strategy == "output" else _backward_weight
    grad_x, grad_w, weight_share, grad_folded_b = by_strategy(ctx.spec, grad_out, x, weight, scale, need)
    grad_b, grad_gamma, grad_beta = fold_bias_backward(
        grad_folded_b, bias, running_mean, weight_share, inv_std, scale, (need_b, need_gamma, need_beta)
    )
    return (
        as_dtype(grad_x, ctx.input_dtype),
        as_dtype(grad_w, weight.dtype),
        None if bias is None else as_dtype(grad_b, bias.dtype),
        None if gamma is None else as_dtype(grad_gamma, gamma.dtype),
        None if gamma is None else as_dtype(grad_beta, gamma.dtype),
    )


def _backward_weight(
    spec: OpSpec, grad_out: Tensor, x: Tensor, weight: Tensor, scale: Tensor, need: Tuple[bool, ...]
) -> Grads:
    """Strategy "weight": the operator's backward with the recomputed W' = W * s, then back through the
    fold. Returns (dx, dW, gamma's share from W, dL/db'), the last three in the fold dtype."""
    need_x, need_w, need_gamma, need_folded_b = need
    folded_w = as_dtype(fold_weight(weight, scale), grad_out.dtype)
    grad_x, grad_folded_w, grad_folded_b = op_backward(
        spec, grad_out, x, folded_w, (need_x, need_w or need_gamma, need_folded_b)
    )
    grad_w = weight_share = None
    if grad_folded_w is not None:
        grad_w, weight_share = fold_weight_backward(grad_folded_w, weight, scale, (need_w, need_gamma))
    return grad_x, grad_w, weight_share, grad_folded_b


def _backward_output(
    spec: OpSpec, grad_out: Tensor, x: Tensor, weight: Tensor, scale: Tensor, need: Tuple[bool, ...]
) -> Grads:
    """Strategy "output": d/dx and d/dW of op(x, W) * s are those of op(x, W) for the gradient g * s,
    and d/dW is then already the weight's gradient. Returns (dx, dW, gamma's share from W, dL/db')."""
    need_x, need_w, need_gamma, need_folded_b = need
    if need_gamma:
        # a zero s (gamma == 0) would lose dL/dW' for gamma's gradient: a tiny stand-in scale keeps it
        # recoverable, at a relative cost far below round-off
        scale = torch.where(scale == 0, torch.finfo(scale.dtype).tiny ** 0.5, scale)
    scaled_grad = grad_out * scale.view(output_shape(grad_out.dim()))
    grad_x, grad_w, _ = op_backward(spec, scaled_grad, x, weight, (need_x, need_w or need_gamma, False))
    grad_folded_b = grad_out.sum(reduce_dims(grad_out.dim())) if need_folded_b else None
    weight_share = None
    if need_gamma:  # grad_w is dL/dW' * s
        weight_share = channel_dot(grad_w, weight).div_(scale)
    return grad_x, grad_w, weight_share, grad_folded_b


def _refuse_double_backward(grads: Grads, inputs: Tuple[Optional[Tensor], ...]) -> Grads:
    """The gradients, as tensors whose own backward raises :data:`DOUBLE_BACKWARD_MESSAGE` (what
    ``once_differentiable`` does, with a message that names tune mode and the fix). The error node also
    links to the function's ``inputs``, so that a gradient of a gradient with respect to one of them
    reaches it and raises, instead of reporting the input as unused."""
    delayed_error = getattr(getattr(torch._C, "_functions", None), "DelayedError", None)
    if delayed_error is None:  # pragma: no cover - every supported torch has it
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)

    def differentiable(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None:
            return None
        t = t.detach()
        t.requires_grad_(True)
        return t

    links = [t for t in inputs if t is not None and t.requires_grad]
    tensors = [differentiable(g) for g in grads] + links
    refused = delayed_error(DOUBLE_BACKWARD_MESSAGE.encode(), len(tensors))(*tensors)
    refused = tuple(refused) if isinstance(refused, (tuple, list)) else (refused,)
    return refused[: len(grads)]
