"""ConvBN and LinearBN blocks that compute in one of four modes: train, eval, tune, deploy.

A block owns a linear operator (``.conv``: Conv1d/2d/3d, or ``.linear``) and a BatchNorm ``.bn``.
With s = gamma / sqrt(running_var + eps) per output channel:

* train  -- operator, then BatchNorm as PyTorch computes it (batch statistics while ``training``).
* eval   -- operator, then BatchNorm with the running statistics, never updated.
* tune   -- one operator call with the weight ``W * s`` and bias ``beta + (b - mean) * s``, folded on
  every call inside :class:`TuneFunction`, which keeps only the input for backward and recomputes the
  folded weight there. Same function of the same parameters as eval, with deploy's activation memory.
* deploy -- tune's fold is written into the parameters once, when the mode is entered; leaving deploy
  unfolds them. ``state_dict()`` always holds the unfolded (canonical) values, so checkpoints are
  interchangeable between modes.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["Mode", "ConvBNBase", "ConvBN", "LinearBN", "TuneFunction", "MODE_CHOICES"]


class Mode(str, Enum):
    """Computation mode of a ConvBN block. Strings are accepted anywhere, case-insensitively."""

    TRAIN = "train"
    EVAL = "eval"
    TUNE = "tune"
    DEPLOY = "deploy"

    @classmethod
    def _missing_(cls, value: object) -> Mode:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.strip().lower():
                    return member
        raise ValueError(f"unknown mode {value!r}; choose one of: {', '.join(MODE_CHOICES)}")

    @classmethod
    def parse(cls, value: Union[str, Mode]) -> Mode:
        """Return the Mode named by ``value`` (a Mode or a string such as "Tune")."""
        return value if isinstance(value, Mode) else cls(value)

    def __str__(self) -> str:
        return self.value


MODE_CHOICES: Tuple[str, ...] = tuple(m.value for m in Mode)

# The operator a block folds BatchNorm into. ("linear",) or ("conv", stride, padding, dilation, groups).
OpSpec = Tuple[Any, ...]


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution in for ``x``, or x's own dtype outside autocast."""
    device_type = x.device.type
    if not _autocast_enabled(device_type) or not x.is_floating_point():
        return x.dtype
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _autocast_off(t: Tensor) -> Any:
    """A context that disables autocast for ``t``'s device, or a no-op one when it is off already."""
    device_type = t.device.type
    return (
        torch.autocast(device_type, enabled=False)
        if _autocast_enabled(device_type)
        else contextlib.nullcontext()
    )


def _fold_dtype(weight: Tensor) -> torch.dtype:
    """Folding runs in at least float32, whatever the parameters' or autocast's dtype."""
    return torch.promote_types(weight.dtype, torch.float32)


def _inv_std(running_var: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    return torch.rsqrt(running_var.to(dtype) + eps)


def _scale(gamma: Optional[Tensor], running_var: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    inv_std = _inv_std(running_var, eps, dtype)
    return inv_std if gamma is None else gamma.to(dtype) * inv_std


def _weight_shape(ndim: int) -> Tuple[int, ...]:
    """View shape of a per-output-channel vector broadcast against a weight of ``ndim`` dimensions."""
    return _WEIGHT_SHAPES[ndim] if ndim < len(_WEIGHT_SHAPES) else (-1,) + (1,) * (ndim - 1)


def _output_shape(ndim: int) -> Tuple[int, ...]:
    """View shape of a per-channel vector broadcast against an operator output of ``ndim`` dimensions."""
    return _OUTPUT_SHAPES[ndim] if ndim < len(_OUTPUT_SHAPES) else (1, -1) + (1,) * (ndim - 2)


def _reduce_dims(ndim: int) -> Tuple[int, ...]:
    """The dimensions of an operator output to sum over for a per-channel total."""
    return _REDUCE_DIMS[ndim] if ndim < len(_REDUCE_DIMS) else (0,) + tuple(range(2, ndim))


_WEIGHT_SHAPES = [(-1,)] + [(-1,) + (1,) * (n - 1) for n in range(1, 6)]
_OUTPUT_SHAPES = [(-1,), (-1,)] + [(1, -1) + (1,) * (n - 2) for n in range(2, 6)]
_REDUCE_DIMS = [(), (0,)] + [(0,) + tuple(range(2, n)) for n in range(2, 6)]


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """Reshape a per-output-channel vector to broadcast against a weight of ``ndim`` dimensions."""
    return t.view(_weight_shape(ndim))


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype`` (None stays None). Cheaper than ``t.to(dtype)`` when nothing is converted,
    which matters on the per-block hot path of small inputs."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _bn_inference(
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
        _as(value, dtype).unsqueeze(0),
        _as(gamma, dtype),
        _as(beta, dtype),
        _as(mean, dtype),
        _as(running_var, dtype),
        False,
        0.0,
        eps,
        False,
    )
    return out.squeeze(0)


def _fold_params(
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tuple[Tensor, Tensor]:
    """(W', b'), the operator's weight and bias with BatchNorm's inference transform folded in, in the
    fold dtype."""
    fold = _fold_dtype(weight)
    zeros = torch.zeros(weight.shape[0], dtype=fold, device=weight.device)
    folded_w = _bn_inference(weight, gamma, None, zeros, running_var, eps, fold)
    folded_b = _bn_inference(
        zeros if bias is None else bias, gamma, beta, running_mean, running_var, eps, fold
    )
    return folded_w, folded_b


def _bn_inference_backward(
    grad_folded: Tensor,
    value: Tensor,
    gamma: Optional[Tensor],
    mean: Tensor,
    running_var: Tensor,
    inv_std: Tensor,
    eps: float,
    mask: Tuple[bool, bool, bool],
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Backward of :func:`_bn_inference`, in ``inv_std``'s dtype (the fold dtype).

    Given dL/d(transformed value), returns (dL/dvalue, dL/dgamma, dL/dbeta) where ``mask`` asks:
    BatchNorm's own backward kernel, in inference mode, computes all three in one read of both tensors.
    (In inference mode the kernels recompute the statistics from ``mean`` and ``running_var``; CUDA's
    wants them as saved by a forward as well, so both are passed.)
    """
    fold = inv_std.dtype
    grad_value, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
        _as(grad_folded, fold).unsqueeze(0),
        _as(value, fold).unsqueeze(0),
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


_CONV_FUNCTIONS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def _forward_op(spec: OpSpec, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The operator through its functional form, which autocast casts as it casts nn.Conv*d and nn.Linear
    (``torch.convolution`` itself is not on autocast's lists: Deploy would silently stay in float32)."""
    if spec[0] == "linear":
        return F.linear(x, weight, bias)
    _, stride, padding, dilation, groups = spec
    return _CONV_FUNCTIONS[weight.dim()](x, weight, bias, stride, padding, dilation, groups)


def _backward_op(
    spec: OpSpec, grad: Tensor, x: Tensor, weight: Tensor, mask: Tuple[bool, bool, bool]
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of the operator's input, weight and bias, each computed only where ``mask`` asks."""
    if spec[0] == "linear":
        grad_x = grad @ weight if mask[0] else None
        grad_w = grad.t() @ x if mask[1] else None
        grad_b = grad.sum(0) if mask[2] else None
        return grad_x, grad_w, grad_b
    _, stride, padding, dilation, groups = spec
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        [weight.shape[0]],
        stride,
        padding,
        dilation,
        False,
        [0] * len(stride),
        groups,
        list(mask),
    )
    return (grad_x if mask[0] else None, grad_w if mask[1] else None, grad_b if mask[2] else None)


def _output_numel(spec: OpSpec, x: Tensor, weight: Tensor) -> int:
    """Number of elements the operator produces for input ``x`` (without running it)."""
    if spec[0] == "linear":
        return x.shape[0] * weight.shape[0]
    _, stride, padding, dilation, _ = spec
    numel = x.shape[0] * weight.shape[0]
    for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        numel *= max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)
    return numel


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
    return "output" if _output_numel(spec, x, weight) < weight.numel() else "weight"


class TuneFunction(torch.autograd.Function):
    """Operator with BatchNorm folded in on the fly (the paper's Tune mode).

    ``apply(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec, compute_dtype, strategy)``.
    Keeps x (in ``compute_dtype``) and the module's own tensors for backward, nothing else: the folded
    weight is recomputed in backward. With ``strategy="weight"`` the operator runs once with ``W * s``
    (folded in float32, or float64 for float64 parameters, then cast to ``compute_dtype``); with
    ``strategy="output"`` it runs with W and its output is normalised per channel (and in backward the
    incoming gradient is scaled instead of the weight), which is cheaper where the output is smaller
    than the weight (see :func:`choose_strategy`). Every per-channel quantity is recomputed from the
    module's tensors, so backward sees exactly the function forward computed.
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
        with _autocast_off(x):
            x = _as(x, compute_dtype)
            out = _tune_forward(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec, strategy)
        # x and the module's own tensors, nothing else: Tune's activation memory is exactly Deploy's
        ctx.save_for_backward(x, weight, bias, gamma, running_mean, running_var)
        ctx.eps, ctx.spec, ctx.compute_dtype, ctx.input_dtype = eps, spec, compute_dtype, input_dtype
        ctx.strategy = strategy
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, bias, gamma, running_mean, running_var = ctx.saved_tensors
        need_x, need_w, need_b, need_gamma, need_beta = ctx.needs_input_grad[:5]
        need_folded_b = need_b or need_beta or need_gamma
        eps, spec = ctx.eps, ctx.spec
        fold = _fold_dtype(weight)
        with _autocast_off(grad_out):
            grad_out = _as(grad_out, ctx.compute_dtype)
            gamma_f = _as(gamma, fold)
            var_f = _as(running_var, fold)
            inv_std = _inv_std(var_f, eps, fold)
            zeros = torch.zeros_like(var_f)
            grad_w = weight_share = grad_folded_b = None
            if ctx.strategy == "output":
                # d/dx and d/dW of (conv(x, W) * s) are those of conv(x, W) for the gradient g = grad * s,
                # and d/dW is then already the weight's gradient. A zero s (gamma == 0) would lose dL/dW'
                # for gamma's gradient: there a tiny stand-in scale keeps it recoverable, at a relative
                # cost far below round-off.
                scale = inv_std if gamma_f is None else gamma_f * inv_std
                if need_gamma:
                    scale = torch.where(scale == 0, torch.finfo(fold).tiny ** 0.5, scale)
                grad_x, grad_w, _ = _backward_op(
                    spec,
                    grad_out * scale.view(_output_shape(grad_out.dim())),
                    x,
                    weight,
                    (need_x, need_w or need_gamma, False),
                )
                if need_folded_b:
                    grad_folded_b = grad_out.sum(_reduce_dims(grad_out.dim()))
                if need_gamma:  # grad_w is dL/dW' * s
                    _, weight_share, _ = _bn_inference_backward(
                        grad_w, weight, None, zeros, var_f, inv_std, eps, (False, True, False)
                    )
                    weight_share = weight_share.div_(scale)
            else:
                folded_w = _as(
                    _bn_inference(weight, gamma_f, None, zeros, var_f, eps, fold), ctx.compute_dtype
                )
                grad_x, grad_folded_w, grad_folded_b = _backward_op(
                    spec, grad_out, x, folded_w, (need_x, need_w or need_gamma, need_folded_b)
                )
                if grad_folded_w is not None:
                    grad_w, weight_share, _ = _bn_inference_backward(
                        grad_folded_w,
                        weight,
                        gamma_f,
                        zeros,
                        var_f,
                        inv_std,
                        eps,
                        (need_w, need_gamma, False),
                    )
            grad_b = grad_gamma = grad_beta = None
            if need_folded_b:
                grad_b, bias_share, grad_beta = _bn_inference_backward(
                    grad_folded_b,
                    zeros if bias is None else bias,
                    gamma_f,
                    _as(running_mean, fold),
                    var_f,
                    inv_std,
                    eps,
                    (need_b, need_gamma, need_beta),
                )
                if need_gamma:
                    grad_gamma = _as(weight_share + bias_share, gamma.dtype)
                if need_beta:
                    grad_beta = _as(grad_beta, gamma.dtype)
                if need_b:
                    grad_b = _as(grad_b, bias.dtype)
            if grad_w is not None:
                grad_w = _as(grad_w, weight.dtype) if need_w else None
        if grad_x is not None:
            grad_x = _as(grad_x, ctx.input_dtype)
        return grad_x, grad_w, grad_b, grad_gamma, grad_beta, None, None, None, None, None, None


def _tune_forward(
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
        out = _forward_op(spec, x, weight, bias)
        return F.batch_norm(out, running_mean, running_var, gamma, beta, False, 0.0, eps)
    folded_w, folded_b = _fold_params(weight, bias, gamma, beta, running_mean, running_var, eps)
    return _forward_op(spec, x, _as(folded_w, x.dtype), _as(folded_b, x.dtype))


_BN_TYPES = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class ConvBNBase(nn.Module):
    """Shared mode machinery of :class:`ConvBN` and :class:`LinearBN`.

    Subclasses name their operator in ``op_attr`` and describe it in :meth:`_op_spec`.
    ``module.train()``/``module.eval()`` keep their PyTorch meaning; ``.mode`` chooses the computation.
    """

    op_attr = "conv"
    bn: nn.modules.batchnorm._BatchNorm
    #: Where tune mode applies the BatchNorm scale: "auto" (per call, see :func:`choose_strategy`),
    #: "weight" or "output". All three compute the same function with the same activation memory.
    tune_strategy: str = "auto"

    def __init__(self, op: nn.Module, bn: nn.modules.batchnorm._BatchNorm, mode: Union[str, Mode]) -> None:
        super().__init__()
        setattr(self, self.op_attr, op)
        self.bn = bn
        self._mode = Mode.TRAIN
        self.register_load_state_dict_post_hook(_refold_after_load)
        self.mode = mode

    # --- the operator -------------------------------------------------------------------------
    @property
    def op(self) -> nn.Module:
        return getattr(self, self.op_attr)

    def _op_spec(self) -> OpSpec:  # pragma: no cover - overridden
        raise NotImplementedError

    def _prepare_input(self, x: Tensor) -> Tensor:
        """Hook for padding that the plain operator call does not do itself."""
        return x

    # --- mode ---------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """The computation: "train", "eval", "tune" or "deploy" (a :class:`Mode`)."""
        return self._mode

    @mode.setter
    def mode(self, value: Union[str, Mode]) -> None:
        new = Mode.parse(value)
        if new is not Mode.TRAIN:
            self._check_running_stats(new)
        if new is self._mode:
            return
        with torch.no_grad():
            if self._mode is Mode.DEPLOY:
                self._unfold_()
            if new is Mode.DEPLOY:
                self._fold_()
        self._mode = new

    def _check_running_stats(self, mode: Mode) -> None:
        if self.bn.running_mean is None or self.bn.running_var is None:
            raise ValueError(
                f"{type(self).__name__}: mode {mode.value!r} computes with BatchNorm's running statistics, "
                "but this block's BatchNorm has none (track_running_stats=False). Use mode 'train', or "
                "build the BatchNorm with track_running_stats=True."
            )

    def extra_repr(self) -> str:
        return f"mode={self._mode.value}"

    # --- folding ------------------------------------------------------------------------------
    def _scale(self, dtype: torch.dtype) -> Tensor:
        gamma = self.bn.weight if self.bn.affine else None
        return _scale(gamma, self.bn.running_var, self.bn.eps, dtype)

    def folded_weight_and_bias(self) -> Tuple[Tensor, Tensor]:
        """The (weight, bias) of the single operator equal to this block in eval mode (new tensors)."""
        with torch.no_grad():
            weight, bias, gamma, beta = self._canonical_tensors()
            folded_w, folded_b = _fold_params(
                weight, bias, gamma, beta, self.bn.running_mean, self.bn.running_var, self.bn.eps
            )
            return folded_w.to(weight.dtype), folded_b.to(weight.dtype)

    def _fold_(self) -> None:
        """Write the fold into the parameters in place (entering deploy)."""
        weight, bias = self.op.weight, self.op.bias
        fold = _fold_dtype(weight)
        scale = self._scale(fold)
        if bool((scale == 0).any()):
            zero = torch.nonzero(scale == 0).flatten().tolist()
            raise ValueError(
                f"{type(self).__name__}: cannot enter deploy mode, BatchNorm weight (gamma) is zero for "
                f"output channels {zero[:10]}; the fold could not be undone. Use tune mode instead."
            )
        gamma, beta = (self.bn.weight, self.bn.bias) if self.bn.affine else (None, None)
        folded_w, folded_b = _fold_params(
            weight, bias, gamma, beta, self.bn.running_mean, self.bn.running_var, self.bn.eps
        )
        if self.bn.affine:
            self.bn.bias.copy_(folded_b)
        elif bias is not None:
            bias.copy_(folded_b)
        weight.copy_(folded_w)

    def _unfold_(self) -> None:
        """Undo :meth:`_fold_` (leaving deploy)."""
        weight, bias = self.op.weight, self.op.bias
        fold = _fold_dtype(weight)
        scale = self._scale(fold)
        mean = self.bn.running_mean.to(fold)
        weight.copy_(weight.to(fold) / _channel_view(scale, weight.dim()))
        if self.bn.affine:
            centred = -mean if bias is None else bias.to(fold) - mean
            self.bn.bias.copy_(self.bn.bias.to(fold) - centred * scale)
        elif bias is not None:
            bias.copy_(bias.to(fold) / scale + mean)

    def _deploy_bias(self) -> Optional[Tensor]:
        if self.bn.affine:
            return self.bn.bias
        if self.op.bias is not None:
            return self.op.bias
        with torch.no_grad():
            weight = self.op.weight
            zeros = torch.zeros(weight.shape[0], dtype=_fold_dtype(weight), device=weight.device)
            bn = self.bn
            folded_b = _bn_inference(zeros, None, None, bn.running_mean, bn.running_var, bn.eps, zeros.dtype)
            return folded_b.to(weight.dtype)

    def _canonical_tensors(self) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """(W, b, gamma, beta) as eval mode sees them, unfolded if the block is in deploy."""
        weight, bias = self.op.weight, self.op.bias
        gamma = self.bn.weight if self.bn.affine else None
        beta = self.bn.bias if self.bn.affine else None
        if self._mode is not Mode.DEPLOY:
            return weight, bias, gamma, beta
        with torch.no_grad():
            fold = _fold_dtype(weight)
            scale = self._scale(fold)
            mean = self.bn.running_mean.to(fold)
            weight = (weight.to(fold) / _channel_view(scale, weight.dim())).to(weight.dtype)
            if beta is not None:
                centred = -mean if bias is None else bias.to(fold) - mean
                beta = (beta.to(fold) - centred * scale).to(beta.dtype)
            elif bias is not None:
                bias = (bias.to(fold) / scale + mean).to(bias.dtype)
        return weight, bias, gamma, beta

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Like :meth:`nn.Module.state_dict`, but always with unfolded (eval-mode) values."""
        state = super().state_dict(*args, **kwargs)
        if self._mode is Mode.DEPLOY:
            prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
            weight, bias, _, beta = self._canonical_tensors()
            state[f"{prefix}{self.op_attr}.weight"] = weight.detach().clone()
            if bias is not None:
                state[f"{prefix}{self.op_attr}.bias"] = bias.detach().clone()
            if beta is not None:
                state[f"{prefix}bn.bias"] = beta.detach().clone()
        return state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs) -> None:
        # Children load after this; unfold first so that keys the checkpoint lacks stay consistent.
        if self._mode is Mode.DEPLOY:
            with torch.no_grad():
                self._unfold_()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        mode = self._mode
        if mode is Mode.TRAIN:
            return self.bn(self.op(x))
        self._check_running_stats(mode)
        bn = self.bn
        if mode is Mode.EVAL:
            return F.batch_norm(
                self.op(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        x = self._prepare_input(x)
        spec = self._op_spec()
        if mode is Mode.TUNE:
            weight = self.op.weight
            compute_dtype = _autocast_dtype(x)
            strategy = choose_strategy(spec, x, weight, compute_dtype, self.tune_strategy)
            if strategy == "output" and bn.running_var.dtype != weight.dtype:
                strategy = "weight"
            tensors = (
                x,
                weight,
                self.op.bias,
                bn.weight if bn.affine else None,
                bn.bias if bn.affine else None,
                bn.running_mean,
                bn.running_var,
            )
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors[:5]):
                return TuneFunction.apply(*tensors, bn.eps, spec, compute_dtype, strategy)
            # nothing to differentiate: the same computation without the autograd function
            with _autocast_off(x):
                return _tune_forward(x.to(compute_dtype), *tensors[1:], bn.eps, spec, strategy)
        return _forward_op(spec, x, self.op.weight, self._deploy_bias())


def _refold_after_load(module: ConvBNBase, incompatible_keys: Any) -> None:
    if module._mode is Mode.DEPLOY:
        with torch.no_grad():
            module._fold_()


def _ntuple(value: Union[int, Sequence[int]], n: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name}={value!r} needs {n} values for a {n}-d convolution")
    return value


class ConvBN(ConvBNBase):
    """Convolution (1-, 2- or 3-d) followed by BatchNorm, switchable among train/eval/tune/deploy.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups, bias, padding_mode:
            as for ``nn.Conv2d``; ``bias`` defaults to False since BatchNorm follows.
        padding: default ``(kernel_size - 1) // 2 * dilation`` per dimension (keeps the size at
            stride 1 for odd kernels); an int, a tuple, "same" or "valid" as for ``nn.Conv2d``.
        dim: 1, 2 or 3: the convolution and BatchNorm type.
        eps, momentum, affine, track_running_stats: as for ``nn.BatchNorm2d``.
        mode: initial mode (default "train", which is plain Conv + BatchNorm).

    Example::

        block = ConvBN(64, 128, kernel_size=3, stride=2)
        block.mode = "tune"
    """

    op_attr = "conv"
    conv: nn.modules.conv._ConvNd

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]] = 3,
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[None, int, str, Sequence[int]] = None,
        dilation: Union[int, Sequence[int]] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        dim: int = 2,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        mode: Union[str, Mode] = Mode.TRAIN,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if dim not in _CONV_TYPES:
            raise ValueError(f"dim={dim!r} is not supported; use 1, 2 or 3")
        if padding is None:
            kernel = _ntuple(kernel_size, dim, "kernel_size")
            dil = _ntuple(dilation, dim, "dilation")
            padding = tuple((k - 1) // 2 * d for k, d in zip(kernel, dil))
        factory = {"device": device, "dtype": dtype}
        conv = _CONV_TYPES[dim](
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            **factory,
        )
        bn = _BN_TYPES[dim](
            out_channels,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            **factory,
        )
        super().__init__(conv, bn, mode)

    @classmethod
    def from_modules(
        cls,
        conv: nn.modules.conv._ConvNd,
        bn: nn.modules.batchnorm._BatchNorm,
        mode: Union[str, Mode] = "train",
    ) -> ConvBN:
        """Wrap an existing convolution and BatchNorm (their parameters are shared, not copied)."""
        if not isinstance(conv, tuple(_CONV_TYPES.values())) or conv.transposed:
            raise TypeError(f"ConvBN.from_modules needs an nn.Conv1d/2d/3d, got {type(conv).__name__}")
        _check_bn(bn, conv.out_channels, type(conv).__name__)
        block = cls.__new__(cls)
        ConvBNBase.__init__(block, conv, bn, mode)
        return block

    def _padding_pairs(self) -> Optional[Tuple[int, ...]]:
        """F.pad-style pads (last dimension first) when padding is not a symmetric int per side."""
        conv = self.conv
        if not isinstance(conv.padding, str) and conv.padding_mode == "zeros":
            return None
        pads = []
        for k, d, p in reversed(list(zip(conv.kernel_size, conv.dilation, _padding_ints(conv)))):
            if conv.padding == "same":
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [p, p]
        return tuple(pads)

    def _prepare_input(self, x: Tensor) -> Tensor:
        pads = self._padding_pairs()
        if pads is None or not any(pads):
            return x
        mode = "constant" if self.conv.padding_mode == "zeros" else self.conv.padding_mode
        return F.pad(x, pads, mode=mode)

    def _op_spec(self) -> OpSpec:
        conv = self.conv
        padding = list(_padding_ints(conv)) if self._padding_pairs() is None else [0] * len(conv.kernel_size)
        return ("conv", list(conv.stride), padding, list(conv.dilation), conv.groups)


def _padding_ints(conv: nn.modules.conv._ConvNd) -> Tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) * len(conv.kernel_size)
    return tuple(conv.padding)


def _check_bn(bn: nn.Module, channels: int, op_name: str) -> None:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"expected a BatchNorm layer after the {op_name}, got {type(bn).__name__}")
    if bn.num_features != channels:
        raise ValueError(
            f"BatchNorm has {bn.num_features} features but the {op_name} produces {channels} channels"
        )


class LinearBN(ConvBNBase):
    """Linear layer followed by BatchNorm1d on 2-D input ([N, features]), with the four modes.

    Used for classifier bottlenecks. Arguments as for ``nn.Linear`` and ``nn.BatchNorm1d``.
    """

    op_attr = "linear"
    linear: nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        mode: Union[str, Mode] = Mode.TRAIN,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        linear = nn.Linear(in_features, out_features, bias=bias, **factory)
        bn = nn.BatchNorm1d(
            out_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            **factory,
        )
        super().__init__(linear, bn, mode)

    @classmethod
    def from_modules(
        cls, linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm, mode: Union[str, Mode] = "train"
    ) -> LinearBN:
        """Wrap an existing Linear and BatchNorm1d (their parameters are shared, not copied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LinearBN.from_modules needs an nn.Linear, got {type(linear).__name__}")
        _check_bn(bn, linear.out_features, "Linear")
        block = cls.__new__(cls)
        ConvBNBase.__init__(block, linear, bn, mode)
        return block

    def _op_spec(self) -> OpSpec:
        return ("linear",)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(
                f"LinearBN expects input of shape [batch, {self.linear.in_features}], got {tuple(x.shape)}; "
                "flatten the features first"
            )
        return super().forward(x)
