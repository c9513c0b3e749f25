"""In-Place Activated BatchNorm (Rota Bulo et al., CVPR 2018) in pure PyTorch, and a model converter.

The paper's memory-saving baseline for the Tune-mode comparison. BatchNorm and a leaky ReLU are fused
into one autograd function that writes its result over its input and keeps only that result (plus
per-channel statistics and the affine parameters) for backward; backward inverts the activation and the
affine transform to recover the normalised input. The normalisation scale is ``|gamma| + eps`` so that
it is never zero and the inversion always exists.

* :class:`InPlaceABNFunction` / :func:`inplace_abn` -- the fused function (train and eval formulas).
* :class:`InPlaceABN` -- a module with BatchNorm's parameter and buffer names.
* :func:`convert_to_inplace_abn` -- replace every ConvBN that feeds a ReLU (as the model's blocks declare
  in ``inplace_abn_pairs``, or inside a plain ``nn.Sequential``) by conv + InPlaceABN, carrying the
  pretrained statistics over so that the converted model computes the original with leaky ReLUs.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from .convbn import ConvBN

__all__ = [
    "InPlaceABNFunction",
    "inplace_abn",
    "InPlaceABN",
    "ConvInPlaceABN",
    "convert_to_inplace_abn",
    "count_inplace_abn",
    "PAIRS_ATTR",
]

#: Class attribute through which a block lists its (ConvBN attribute, ReLU attribute) pairs.
PAIRS_ATTR = "inplace_abn_pairs"

_ACTIVATIONS = ("leaky_relu", "identity")


def _check_slope(slope: float) -> float:
    slope = float(slope)
    if not math.isfinite(slope) or slope <= 0:
        raise ValueError(
            f"In-Place ABN needs an invertible activation, but the leaky ReLU slope is {slope!r}: with a "
            "slope <= 0 the activation has no inverse and the gradients would be silently wrong. Use "
            "activation='leaky_relu' with activation_param > 0 (0.01 is the usual choice)."
        )
    return slope


def _check_input(x: Tensor, num_features: Optional[int] = None, training: bool = False) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"In-Place ABN expects a Tensor, got {type(x).__name__}")
    if x.requires_grad and x.is_leaf:
        raise ValueError(
            "In-Place ABN overwrites its input, but the input is a leaf tensor that requires grad (a "
            "parameter or a user tensor created with requires_grad=True); its value would be destroyed. "
            "Pass a non-leaf tensor, e.g. the output of a convolution, or a clone: abn(x.clone())."
        )
    base = x._base
    if base is not None and base.requires_grad and base.is_leaf:
        raise ValueError(
            "In-Place ABN overwrites its input, but the input is a view of a leaf tensor that requires grad; "
            "pass a non-leaf tensor, e.g. the output of a convolution, or a clone."
        )
    if not x.is_floating_point():
        raise TypeError(f"In-Place ABN needs a floating-point input, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"In-Place ABN expects input of shape [N, C, *], got {tuple(x.shape)}")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"In-Place ABN was built for {num_features} channels but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}, channels in dimension 1)"
        )
    if training and x.numel() <= x.shape[1]:
        raise ValueError(
            f"In-Place ABN in training needs more than 1 value per channel, got input of shape "
            f"{tuple(x.shape)}; use a larger batch or eval mode"
        )


def _reduce_dims(x: Tensor) -> List[int]:
    return [0] + list(range(2, x.dim()))


def _channel_shape(x: Tensor) -> Tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Statistics and gradients are computed in at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


class InPlaceABNFunction(torch.autograd.Function):
    """BatchNorm (scale ``|weight| + eps``) then leaky ReLU, written over ``x``.

    ``apply(x, weight, bias, running_mean, running_var, training, momentum, eps, slope)``:

    * ``training`` True: batch statistics; if running statistics are given they are updated in place
      with PyTorch's convention ``running = (1 - momentum) * running + momentum * batch`` and the
      unbiased batch variance.
    * ``training`` False: the running statistics, which must then be given.

    Saved for backward: the output (the storage of ``x``), the per-channel inverse standard deviation
    and the affine parameters. Nothing else of input size.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        training: bool,
        momentum: float,
        eps: float,
        slope: float,
    ) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            dims, shape, cdt = _reduce_dims(x), _channel_shape(x), _compute_dtype(x)
            count = x.numel() // x.shape[1]
            if training:
                var, mean = torch.var_mean(x.to(cdt), dim=dims, correction=0)
                if running_mean is not None and running_var is not None:
                    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                    unbiased = var * (count / (count - 1))
                    running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
            else:
                if running_mean is None or running_var is None:
                    raise ValueError("In-Place ABN outside training needs running_mean and running_var")
                mean, var = running_mean.to(cdt), running_var.to(cdt)
            inv_std = torch.rsqrt(var + eps)
            scale = inv_std if weight is None else (weight.to(cdt).abs() + eps) * inv_std
            shift = -mean * scale
            if bias is not None:
                shift = shift + bias.to(cdt)
            if x.dtype == cdt:
                x.mul_(scale.reshape(shape)).add_(shift.reshape(shape))
            else:
                x.copy_(torch.addcmul(shift.reshape(shape), x.to(cdt), scale.reshape(shape)))
            if slope != 1.0:
                F.leaky_relu(x, slope, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, inv_std, weight, bias)
        ctx.training, ctx.eps, ctx.slope, ctx.count = training, eps, slope, count
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        z, inv_std, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        with torch.autocast(z.device.type, enabled=False):
            dims, shape, cdt = _reduce_dims(z), _channel_shape(z), _compute_dtype(z)
            z, dz = z.to(cdt), grad_out.to(cdt)
            # Invert the leaky ReLU: y = z where z >= 0, z / slope elsewhere; its derivative likewise.
            if ctx.slope != 1.0:
                positive = z >= 0
                y = torch.where(positive, z, z / ctx.slope)
                dy = torch.where(positive, dz, dz * ctx.slope)
                del positive
            else:
                y, dy = z, dz
            # Invert the affine transform: x_hat = (y - beta) / (|gamma| + eps).
            gain = None if weight is None else weight.to(cdt).abs() + ctx.eps
            x_hat = y if bias is None else y - bias.to(cdt).reshape(shape)
            if gain is not None:
                x_hat = x_hat / gain.reshape(shape)
            del y
            sum_dy = dy.sum(dims)
            sum_xdy = (x_hat * dy).sum(dims) if (need_w or (need_x and ctx.training)) else None
            if need_x:
                factor = inv_std if gain is None else gain * inv_std
                if ctx.training:
                    mean_dy = (sum_dy / ctx.count).reshape(shape)
                    mean_xdy = (sum_xdy / ctx.count).reshape(shape)
                    grad_x = (dy - mean_dy - x_hat * mean_xdy) * factor.reshape(shape)
                else:
                    grad_x = dy * factor.reshape(shape)
                grad_x = grad_x.to(grad_out.dtype)
            if need_w:
                grad_w = (torch.sign(weight.to(cdt)) * sum_xdy).to(weight.dtype)
            if need_b:
                grad_b = sum_dy.to(bias.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def inplace_abn(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation_param: float = 0.01,
) -> Tensor:
    """In-Place ABN as a function (argument order as ``F.batch_norm``); overwrites and returns ``x``.

    Equals ``F.leaky_relu(F.batch_norm(x, rm, rv, weight.abs() + eps, bias, training, momentum, eps),
    activation_param)`` in forward and backward. ``x`` must not be a leaf that requires grad, nor a
    tensor that another operation saved for its backward (autograd then raises at backward, because
    its version counter changed), nor be used anywhere after this call.
    """
    _check_input(x, None if weight is None else weight.shape[0], training)
    slope = _check_slope(activation_param)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("inplace_abn(training=False) needs running_mean and running_var")
    return InPlaceABNFunction.apply(
        x, weight, bias, running_mean, running_var, bool(training), float(momentum), float(eps), slope
    )


class InPlaceABN(_NormBase):
    """BatchNorm with scale ``|weight| + eps`` fused with a leaky ReLU, computed in place.

    Parameters and buffers have ``nn.BatchNorm2d``'s names (weight, bias, running_mean, running_var,
    num_batches_tracked), so BatchNorm state dicts load into it; note the ``|weight| + eps`` scale
    (:func:`convert_to_inplace_abn` translates a BatchNorm exactly). ``module.training`` chooses batch
    statistics (with the running-statistics update) or running statistics, as for BatchNorm.

    Args:
        num_features: channels C of an [N, C, *] input (any number of trailing dimensions).
        eps, momentum, affine, track_running_stats: as for ``nn.BatchNorm2d``.
        activation: "leaky_relu" (default) or "identity". "relu" is refused: it has no inverse.
        activation_param: the leaky ReLU's negative slope, > 0 (default 0.01).

    The input is overwritten: it must be a non-leaf tensor (e.g. a convolution's output) that nothing
    else reads afterwards.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        activation: str = "leaky_relu",
        activation_param: float = 0.01,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            if activation == "relu":
                raise ValueError(
                    "In-Place ABN cannot use activation='relu': ReLU has no inverse (negative values all map "
                    "to 0), so backward could not recover its input and the gradients would be silently "
                    "wrong. Use activation='leaky_relu' with activation_param > 0 (e.g. 0.01)."
                )
            raise ValueError(
                f"In-Place ABN activation {activation!r} is not supported; choose one of {_ACTIVATIONS} "
                "(an invertible activation; ELU is left out because its inverse is unstable near -alpha)"
            )
        if activation == "identity":
            activation_param = 1.0
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.activation = activation
        self.activation_param = _check_slope(activation_param)

    def extra_repr(self) -> str:
        act = self.activation if self.activation == "identity" else f"leaky_relu({self.activation_param})"
        return f"{super().extra_repr()}, activation={act}"

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.num_features, self.training or self.running_mean is None)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        keep_stats = not self.training or self.track_running_stats
        return InPlaceABNFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if keep_stats else None,
            self.running_var if keep_stats else None,
            use_batch_stats,
            factor,
            self.eps,
            self.activation_param,
        )


class ConvInPlaceABN(nn.Module):
    """A convolution followed by :class:`InPlaceABN`: what a converted ConvBN + ReLU pair becomes."""

    def __init__(self, conv: nn.Module, abn: InPlaceABN) -> None:
        super().__init__()
        self.conv = conv
        self.abn = abn

    def forward(self, x: Tensor) -> Tensor:
        return self.abn(self.conv(x))


def _activation_slope(act: nn.Module, default: float, where: str) -> float:
    if isinstance(act, nn.LeakyReLU):
        return _check_slope(act.negative_slope)
    if isinstance(act, nn.ReLU):
        return default
    raise TypeError(
        f"{where}: expected an nn.ReLU or nn.LeakyReLU to fold into In-Place ABN, got {type(act).__name__}"
    )


@torch.no_grad()
def _convert_pair(block: ConvBN, slope: float) -> ConvInPlaceABN:
    """conv + InPlaceABN computing ``leaky_relu(block(x))`` for the block in train/eval-style BatchNorm.

    A channel with gamma < 0 has its convolution output (weight and bias) and running mean negated,
    which negates its normalised value, and then uses |gamma|: gamma * x_hat = |gamma| * (-x_hat).
    gamma' = |gamma| - eps makes the scale |gamma'| + eps equal |gamma| exactly where |gamma| > eps.
    """
    if block.mode.value == "deploy":
        block.mode = "train"  # unfolds the parameters exactly
    conv, bn = block.conv, block.bn
    like = bn.weight if bn.affine else bn.running_mean if bn.track_running_stats else conv.weight
    abn = InPlaceABN(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        activation_param=slope,
        device=like.device,
        dtype=like.dtype,
    )
    if bn.affine:
        gamma = bn.weight.detach()
        sign = torch.where(gamma < 0, -1.0, 1.0).to(gamma.dtype)
        magnitude = gamma.abs()
        abn.weight.copy_(torch.where(magnitude > bn.eps, magnitude - bn.eps, magnitude))
        abn.bias.copy_(bn.bias)
        abn.weight.requires_grad_(bn.weight.requires_grad)
        abn.bias.requires_grad_(bn.bias.requires_grad)
        conv.weight.mul_(sign.to(conv.weight.dtype).reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
        if conv.bias is not None:
            conv.bias.mul_(sign.to(conv.bias.dtype))
    else:
        sign = None
    if bn.track_running_stats:
        mean = bn.running_mean if sign is None else bn.running_mean * sign.to(bn.running_mean.dtype)
        abn.running_mean.copy_(mean)
        abn.running_var.copy_(bn.running_var)
        abn.num_batches_tracked.copy_(bn.num_batches_tracked)
    abn.train(bn.training)
    return ConvInPlaceABN(conv, abn)


def _declared_pairs(module: nn.Module, name: str) -> Sequence[Tuple[str, str]]:
    pairs = getattr(module, PAIRS_ATTR, None)
    if pairs is None:
        return ()
    try:
        pairs = [(str(conv), str(act)) for conv, act in pairs]
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{type(module).__name__} ({name or 'model'}).{PAIRS_ATTR} must be a sequence of "
            f"(conv attribute, activation attribute) name pairs, got {getattr(module, PAIRS_ATTR)!r}"
        ) from err
    return pairs


def _sequential_pairs(module: nn.Module) -> Iterator[Tuple[str, str]]:
    """Adjacent (ConvBN, ReLU) children of a plain nn.Sequential (whose forward chains its children)."""
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return
    names = list(module._modules.keys())
    for first, second in zip(names, names[1:]):
        a, b = module._modules[first], module._modules[second]
        if isinstance(a, ConvBN) and isinstance(b, (nn.ReLU, nn.LeakyReLU)):
            yield first, second


def convert_to_inplace_abn(
    model: nn.Module, activation_param: float = 0.01, strict: bool = True
) -> nn.Module:
    """Replace every ConvBN whose output goes straight into a ReLU by conv + :class:`InPlaceABN` (in place).

    Which pairs qualify is declared, not guessed: a module lists them in the class attribute
    ``inplace_abn_pairs = (("conv1", "act1"), ("conv2", "act2"))`` -- names of its direct children, a
    :class:`ConvBN` and an ``nn.ReLU``/``nn.LeakyReLU`` such that its forward computes
    ``act(conv(...))`` and uses the ConvBN's output nowhere else. Adjacent (ConvBN, ReLU) children of a
    plain ``nn.Sequential`` qualify too. Each ConvBN becomes a :class:`ConvInPlaceABN` holding the same
    convolution and an InPlaceABN with the BatchNorm's statistics and affine parameters (a negative gamma
    is moved into the sign of the convolution's output channel); the activation becomes ``nn.Identity``.
    A ReLU becomes a leaky ReLU of slope ``activation_param``; a LeakyReLU keeps its slope.

    The converted model computes the original with those ReLUs replaced by leaky ReLUs, in train and in
    eval (BatchNorm as in train mode: batch statistics while ``model.training``). Its state-dict keys
    change (``convK.bn.*`` -> ``convK.abn.*``) and hold the sign-moved values. Converting again is a
    no-op. Returns ``model``; with ``strict`` a model that ends up with no In-Place ABN is a ValueError.
    """
    slope = _check_slope(activation_param)
    todo: List[Tuple[nn.Module, str, str, float]] = []
    for name, module in model.named_modules():
        declared = _declared_pairs(module, name)
        pairs = declared if declared else list(_sequential_pairs(module))
        for conv_name, act_name in pairs:
            where = f"{type(module).__name__} ({name or 'model'})"
            conv = module._modules.get(conv_name)
            act = module._modules.get(act_name)
            if isinstance(conv, ConvInPlaceABN) and isinstance(act, nn.Identity):
                continue  # converted already
            if not isinstance(conv, ConvBN):
                raise TypeError(
                    f"{where} declares ({conv_name!r}, {act_name!r}) in {PAIRS_ATTR}, but its child "
                    f"{conv_name!r} is {type(conv).__name__ if conv is not None else 'missing'}, not a ConvBN"
                )
            if act is None:
                raise TypeError(
                    f"{where} declares activation {act_name!r} in {PAIRS_ATTR} but has no such child"
                )
            todo.append((module, conv_name, act_name, _activation_slope(act, slope, f"{where}.{act_name}")))
    for module, conv_name, act_name, pair_slope in todo:  # everything checked: now convert
        setattr(module, conv_name, _convert_pair(module._modules[conv_name], pair_slope))
        setattr(module, act_name, nn.Identity())
    if strict and count_inplace_abn(model) == 0:
        raise ValueError(
            f"convert_to_inplace_abn found nothing to convert in {type(model).__name__}: no module declares "
            f"{PAIRS_ATTR} = (('conv1', 'act1'), ...) and no nn.Sequential holds a ConvBN followed by a "
            "ReLU. Pass strict=False to allow this."
        )
    return model


def count_inplace_abn(model: nn.Module) -> int:
    """Number of :class:`InPlaceABN` layers in ``model``."""
    return sum(isinstance(m, InPlaceABN) for m in model.modules())
