"""The fold math: BatchNorm's inference transform folded into the operator before it, and back.

An operator ``y = W x + b`` (a convolution or a linear layer) followed by BatchNorm with running
statistics computes, per output channel c,

    BN(y)_c = (y_c - mean_c) * s_c + beta_c,   s_c = gamma_c / sqrt(running_var_c + eps),

which is the single operator ``W' x + b'`` with

    W'_c = W_c * s_c                          (s broadcast over every dimension of W after the first)
    b'_c = beta_c + (b_c - mean_c) * s_c      (b = 0 without an operator bias; gamma = 1 and beta = 0
                                              for a BatchNorm without affine parameters).

:func:`fold_bn` computes (W', b') and :func:`unfold_bn` / :func:`unfold_bn_beta` invert it. The fold
runs in at least float32 (:func:`fold_dtype`), whatever the parameters' dtype, and through BatchNorm's
own inference kernel (``torch.batch_norm`` on the weight seen as one sample), so that every caller, the
Tune autograd function and Deploy's in-place fold alike, gets bitwise the same folded tensors.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "fold_dtype",
    "as_dtype",
    "bn_scale",
    "bn_transform",
    "bn_transform_backward",
    "fold_bn",
    "unfold_bn",
    "unfold_bn_beta",
    "channel_view",
]


def fold_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a fold of parameters in ``dtype`` runs in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def as_dtype(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype`` (None stays None). Cheaper than ``t.to(dtype)`` when nothing is converted,
    which matters on the per-block hot path of small inputs."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def channel_view(t: Tensor, ndim: int) -> Tensor:
    """A per-output-channel vector viewed to broadcast against a weight of ``ndim`` dimensions."""
    return t.view(_WEIGHT_SHAPES[ndim] if ndim < len(_WEIGHT_SHAPES) else (-1,) + (1,) * (ndim - 1))


_WEIGHT_SHAPES = [(-1,)] + [(-1,) + (1,) * (n - 1) for n in range(1, 6)]


def bn_scale(gamma: Optional[Tensor], running_var: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """The per-channel scale s = gamma / sqrt(running_var + eps) in ``dtype`` (gamma None: 1)."""
    inv_std = torch.rsqrt(running_var.to(dtype) + eps)
    return inv_std if gamma is None else gamma.to(dtype) * inv_std


def bn_transform(
    value: Tensor,
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    mean: Tensor,
    running_var: Tensor,
    eps: float,
    dtype: torch.dtype,
) -> Tensor:
    """BatchNorm's inference transform (value - mean) * gamma / sqrt(var + eps) + beta of ``value`` seen
    as one sample whose first dimension holds the channels, computed in ``dtype`` in one fused pass.

    With ``value`` the operator's weight and a zero mean this is the folded weight W * s; with its bias
    (zeros without one) and the running mean, the folded bias.
    """
    out = torch.batch_norm(
        as_dtype(value, dtype).unsqueeze(0),
        as_dtype(gamma, dtype),
        as_dtype(beta, dtype),
        as_dtype(mean, dtype),
        as_dtype(running_var, dtype),
        False,
        0.0,
        eps,
        False,
    )
    return out.squeeze(0)


def bn_transform_backward(
    grad: Tensor,
    value: Tensor,
    gamma: Optional[Tensor],
    mean: Tensor,
    running_var: Tensor,
    inv_std: Tensor,
    eps: float,
    mask: Tuple[bool, bool, bool],
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Backward of :func:`bn_transform`, in ``inv_std``'s dtype (the fold dtype).

    Given dL/d(transformed value), returns (dL/dvalue, dL/dgamma, dL/dbeta) where ``mask`` asks:
    BatchNorm's own backward kernel, in inference mode, computes all three in one read of both tensors.
    (In inference mode the kernels recompute the statistics from ``mean`` and ``running_var``; CUDA's
    wants them as saved by a forward as well, so both are passed.)
    """
    dtype = inv_std.dtype
    grad_value, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
        as_dtype(grad, dtype).unsqueeze(0),
        as_dtype(value, dtype).unsqueeze(0),
        gamma,
        mean,
        running_var,
        mean,
        inv_std,
        False,
        eps,
        list(mask),
    )
    return (None if grad_value is None else grad_value.squeeze(0)), grad_gamma, grad_beta


def fold_bn(
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tuple[Tensor, Tensor]:
    """(W', b') = (W * s, beta + (b - running_mean) * s) with s = gamma / sqrt(running_var + eps).

    The operator with weight W' and bias b' computes BatchNorm(operator(x)) with the running statistics.
    ``bias``, ``gamma``, ``beta`` may be None (no operator bias: b = 0; no affine: gamma = 1, beta = 0).
    Both results are new tensors in :func:`fold_dtype` of the weight's dtype; cast them to store them.
    Like ``torch.nn.utils.fusion.fuse_conv_bn_weights``, but through BatchNorm's own inference kernel.
    """
    dtype = fold_dtype(weight.dtype)
    zeros = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
    folded_w = bn_transform(weight, gamma, None, zeros, running_var, eps, dtype)
    value = zeros if bias is None else bias
    folded_b = bn_transform(value, gamma, beta, running_mean, running_var, eps, dtype)
    return folded_w, folded_b


def unfold_bn(
    folded_weight: Tensor,
    folded_bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The inverse of :func:`fold_bn` for the operator: (W, b) = (W' / s, (b' - beta) / s + running_mean).

    Exact in real arithmetic for any s != 0 (a zero gamma loses its channel; check first); in floating
    point within a few units of round-off. Results are new tensors in the fold dtype; ``folded_bias``
    None gives b None (only the weight is wanted).
    """
    dtype = fold_dtype(folded_weight.dtype)
    scale = bn_scale(gamma, running_var, eps, dtype)
    weight = folded_weight.to(dtype) / channel_view(scale, folded_weight.dim())
    if folded_bias is None:
        return weight, None
    shifted = folded_bias.to(dtype) if beta is None else folded_bias.to(dtype) - beta.to(dtype)
    return weight, shifted / scale + running_mean.to(dtype)


def unfold_bn_beta(
    folded_bias: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tensor:
    """The BatchNorm shift that, with the operator bias b, folds to b': beta = b' - (b - running_mean) * s.

    The inverse of :func:`fold_bn`'s bias for a fold whose b' was stored in beta's place (the operator
    may have no bias: b = 0). A new tensor in :func:`fold_dtype` of ``folded_bias``'s dtype.
    """
    dtype = fold_dtype(folded_bias.dtype)
    scale = bn_scale(gamma, running_var, eps, dtype)
    mean = running_mean.to(dtype)
    centred = -mean if bias is None else bias.to(dtype) - mean
    return folded_bias.to(dtype) - centred * scale
