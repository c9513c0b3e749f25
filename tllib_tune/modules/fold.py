"""The fold math: BatchNorm's inference transform folded into the operator before it, and back.

An operator ``y = W x + b`` (a convolution or a linear layer) followed by BatchNorm with running
statistics computes, per output channel c,

    BN(y)_c = (y_c - mean_c) * s_c + beta_c,   s_c = gamma_c / sqrt(running_var_c + eps),

which is the single operator ``W' x + b'`` with

    W'_c = W_c * s_c                          (s broadcast over every dimension of W after the first)
    b'_c = beta_c + (b_c - mean_c) * s_c      (b = 0 without an operator bias; gamma = 1 and beta = 0
                                              for a BatchNorm without affine parameters).

:func:`fold_bn` computes (W', b'), :func:`fold_weight_backward` and :func:`fold_bias_backward` take
gradients back through it, :func:`unfold_bn` / :func:`unfold_bn_beta` invert it. The fold runs in at
least float32 (:func:`fold_dtype`), whatever the parameters' dtype, in one pass over W; every caller
(the Tune autograd function in forward and backward, compiled Tune, Deploy's in-place fold) goes through
:func:`fold_weight`, so they all get bitwise the same folded weight.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "fold_dtype",
    "as_dtype",
    "bn_inv_std",
    "bn_scale",
    "scale_of",
    "fold_bias",
    "fold_bn",
    "fold_weight",
    "fold_weight_backward",
    "fold_bias_backward",
    "channel_dot",
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


def bn_inv_std(running_var: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """1 / sqrt(running_var + eps) per channel, in ``dtype``."""
    return torch.rsqrt(as_dtype(running_var, dtype) + eps)


def bn_scale(gamma: Optional[Tensor], running_var: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """The per-channel scale s = gamma / sqrt(running_var + eps) in ``dtype`` (gamma None: 1)."""
    return scale_of(gamma, bn_inv_std(running_var, eps, dtype))


def scale_of(gamma: Optional[Tensor], inv_std: Tensor) -> Tensor:
    """s = gamma * inv_std in ``inv_std``'s dtype (gamma None: inv_std)."""
    return inv_std if gamma is None else as_dtype(gamma, inv_std.dtype) * inv_std


def _centred_bias(bias: Optional[Tensor], running_mean: Tensor, dtype: torch.dtype) -> Tensor:
    """b - running_mean in ``dtype`` (b None: 0)."""
    mean = as_dtype(running_mean, dtype)
    return -mean if bias is None else as_dtype(bias, dtype) - mean


def fold_bias(bias: Optional[Tensor], beta: Optional[Tensor], running_mean: Tensor, scale: Tensor) -> Tensor:
    """The folded bias b' = beta + (b - running_mean) * s, in ``scale``'s dtype (b None: 0, beta None: 0)."""
    centred = _centred_bias(bias, running_mean, scale.dtype)
    return centred * scale if beta is None else torch.addcmul(as_dtype(beta, scale.dtype), centred, scale)


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
    Like ``torch.nn.utils.fusion.fuse_conv_bn_weights``; written in differentiable operations, so that
    torch.compile can fuse it (:mod:`.tune_compiled`), and in as few passes over W as there can be (one).
    """
    scale = bn_scale(gamma, running_var, eps, fold_dtype(weight.dtype))
    return fold_weight(weight, scale), fold_bias(bias, beta, running_mean, scale)


def fold_weight(weight: Tensor, scale: Tensor) -> Tensor:
    """The folded weight W' = W * s, in ``scale``'s dtype (one pass over W)."""
    return as_dtype(weight, scale.dtype) * channel_view(scale, weight.dim())


def channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-output-channel dot product sum_k a_ck b_ck of two tensors shaped like a weight."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def fold_weight_backward(
    grad_folded_w: Tensor, weight: Tensor, scale: Tensor, mask: Tuple[bool, bool]
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Back through W' = W * s: (dL/dW, gamma's share) = (dL/dW' * s, sum_k dL/dW'_ck W_ck), as ``mask``
    asks. In ``scale``'s dtype (the fold dtype); ``grad_folded_w`` in that dtype is scaled in place
    (pass a tensor nobody else holds)."""
    grad_folded_w = as_dtype(grad_folded_w, scale.dtype)
    share = channel_dot(grad_folded_w, as_dtype(weight, scale.dtype)) if mask[1] else None
    grad_w = grad_folded_w.mul_(channel_view(scale, grad_folded_w.dim())) if mask[0] else None
    return grad_w, share


def fold_bias_backward(
    grad_folded_b: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Tensor,
    weight_share: Optional[Tensor],
    inv_std: Tensor,
    scale: Tensor,
    mask: Tuple[bool, bool, bool],
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Back through b' = beta + (b - mean) * s, s = gamma * inv_std: (dL/db, dL/dgamma, dL/dbeta), as
    ``mask`` asks, with dL/db = dL/db' * s, dL/dbeta = dL/db' and
    dL/dgamma_c = inv_std_c * (weight_share_c + dL/db'_c (b_c - mean_c)), where ``weight_share`` is
    :func:`fold_weight_backward`'s sum_k dL/dW'_ck W_ck. In ``scale``'s dtype (the fold dtype)."""
    need_b, need_gamma, need_beta = mask
    dtype = scale.dtype
    grad_folded_b = as_dtype(grad_folded_b, dtype)
    grad_gamma = None
    if need_gamma:
        centred = _centred_bias(bias, running_mean, dtype)
        grad_gamma = torch.addcmul(weight_share, grad_folded_b, centred).mul_(inv_std)
    grad_b = grad_folded_b * scale if need_b else None
    return grad_b, grad_gamma, (grad_folded_b if need_beta else None)


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
    return folded_bias.to(dtype) - _centred_bias(bias, running_mean, dtype) * scale
