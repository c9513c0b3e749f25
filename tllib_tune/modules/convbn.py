"""ConvBN and LinearBN blocks that compute in one of four modes: train, eval, tune, deploy.

A block owns a linear operator (``.conv``: Conv1d/2d/3d, or ``.linear``) and a BatchNorm ``.bn``.
With s = gamma / sqrt(running_var + eps) per output channel:

* train  -- operator, then BatchNorm as PyTorch computes it (batch statistics while ``training``).
* eval   -- operator, then BatchNorm with the running statistics, never updated.
* tune   -- one operator call with the weight ``W * s`` and bias ``beta + (b - mean) * s``, folded on
  every call inside :class:`TuneFunction`, which keeps only the input for backward and recomputes the
  folded weight there. Same function of the same parameters as eval, with deploy's activation memory.
* deploy -- tune's fold is written into the parameters once, when the mode is entered; leaving deploy
  restores them exactly (the values folded over are kept on the CPU) unless the folded parameters were
  changed meanwhile, then it inverts the fold. ``state_dict()`` always holds the unfolded (canonical)
  values, so checkpoints are interchangeable between modes.

``from_modules`` wraps the layers of any model (what :mod:`.support` accepts, see
:func:`convbn_unsupported_reason`). Hooks: the operator's forward pre-hooks run in every mode (so
weight_norm / spectral_norm work in tune); a mode refuses, with the reason, hooks it would skip (the
operator's forward and backward hooks in tune and deploy, BatchNorm's hooks outside train mode) and
weights deploy cannot fold into (parametrizations, pre-hook-computed weights).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autocast import autocast_dtype, autocast_off
from .fold import as_dtype, bn_scale, fold_bias, fold_bn, fold_dtype, unfold_bn, unfold_bn_beta
from .ops import LINEAR, OpSpec, op_forward
from .support import (
    deploy_problem,
    hook_kinds,
    is_tf_same_conv,
    mode_problem,
    normalization_only,
    pair_problem,
    tf_same_pads,
)
from .tune import TuneFunction, choose_strategy, tune_forward
from .tune_compiled import compiled_tune, is_compiling

__all__ = [
    "Mode",
    "ConvBNBase",
    "ConvBN",
    "LinearBN",
    "TuneFunction",
    "MODE_CHOICES",
    "choose_strategy",
    "convbn_unsupported_reason",
]


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

_BN_TYPES = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
#: BatchNorms that train mode calls as they are without asking (the common case, on the hot path).
_PLAIN_BATCHNORMS = frozenset(_BN_TYPES.values()) | {nn.SyncBatchNorm}
_CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class ConvBNBase(nn.Module):
    """Shared mode machinery of :class:`ConvBN` and :class:`LinearBN`.

    Subclasses name their operator in ``op_attr`` and describe it in :meth:`_geometry`.
    ``module.train()``/``module.eval()`` keep their PyTorch meaning; ``.mode`` chooses the computation.
    """

    op_attr = "conv"
    bn: nn.Module
    #: Where tune mode applies the BatchNorm scale: "auto" (per call, see :func:`choose_strategy`),
    #: "weight" or "output". All three compute the same function with the same activation memory.
    tune_strategy: str = "auto"
    #: In deploy, the (weight, bias slot) values folded over, kept for an exact unfold (see _fold_).
    _canonical: Optional[Tuple[Tensor, Optional[Tensor]]] = None

    def __init__(self, op: nn.Module, bn: nn.Module, mode: Union[str, Mode]) -> None:
        super().__init__()
        setattr(self, self.op_attr, op)
        self.bn = bn
        self._mode = Mode.TRAIN
        self.register_load_state_dict_post_hook(_refold_after_load)
        self.mode = mode

    @classmethod
    def _wrap(cls, op: nn.Module, bn: nn.Module, mode: Union[str, Mode]) -> ConvBNBase:
        """A block around existing modules, after checking that it can compute with them."""
        problem = pair_problem(op, bn)
        if problem is not None:
            error, reason = problem
            raise error(f"{cls.__name__}.from_modules: {reason}")
        block = cls.__new__(cls)
        ConvBNBase.__init__(block, op, bn, mode)
        return block

    # --- the operator -------------------------------------------------------------------------
    @property
    def op(self) -> nn.Module:
        return getattr(self, self.op_attr)

    def _geometry(self, op: nn.Module, x: Tensor) -> Tuple[Tensor, OpSpec]:  # pragma: no cover
        """(input padded as the operator ``op`` pads it in its own forward, the spec of the call left)."""
        raise NotImplementedError

    # --- mode ---------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """The computation: "train", "eval", "tune" or "deploy" (a :class:`Mode`)."""
        return self._mode

    @mode.setter
    def mode(self, value: Union[str, Mode]) -> None:
        new = Mode.parse(value)
        self._refuse(new)
        if new is self._mode:
            return
        if self._mode is Mode.DEPLOY:  # a parametrization or weight_norm added while folded
            reason = deploy_problem(self.op, self.bn, type(self).__name__)
            if reason is not None:
                raise ValueError(reason)
        with torch.no_grad():
            if self._mode is Mode.DEPLOY:
                self._unfold_()
            if new is Mode.DEPLOY:
                self._fold_()
        self._mode = new

    def _refuse(self, mode: Mode) -> None:
        """Raise if this block cannot compute right in ``mode`` (see :func:`convbn_unsupported_reason`)."""
        reason = mode_problem(self.op, self.bn, mode.value, type(self).__name__)
        if reason is not None:
            raise ValueError(reason)

    def extra_repr(self) -> str:
        return f"mode={self._mode.value}"

    # --- folding ------------------------------------------------------------------------------
    def _bn_tensors(self) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor, Tensor, float]:
        """(gamma, beta, running_mean, running_var, eps) of the BatchNorm; gamma, beta None if not affine."""
        bn = self.bn
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps

    def folded_weight_and_bias(self) -> Tuple[Tensor, Tensor]:
        """The (weight, bias) of the single operator equal to this block in eval mode (new tensors)."""
        with torch.no_grad():
            weight, bias, gamma, beta = self._canonical_tensors()
            _, _, mean, var, eps = self._bn_tensors()
            folded_w, folded_b = fold_bn(weight, bias, gamma, beta, mean, var, eps)
            return folded_w.to(weight.dtype), folded_b.to(weight.dtype)

    def _fold_(self) -> None:
        """Write the fold into the parameters in place (entering deploy): W' into the operator's weight,
        b' into BatchNorm's beta, or into the operator's bias for a BatchNorm without affine. The values
        they held are kept (on the CPU) so that leaving deploy restores them exactly."""
        weight, bias = self.op.weight, self.op.bias
        gamma, beta, mean, var, eps = self._bn_tensors()
        scale = bn_scale(gamma, var, eps, fold_dtype(weight.dtype))
        if bool((scale == 0).any()):
            zero = torch.nonzero(scale == 0).flatten().tolist()
            raise ValueError(
                f"{type(self).__name__}: cannot enter deploy mode, BatchNorm weight (gamma) is zero for "
                f"output channels {zero[:10]}; the fold could not be undone. Use tune mode instead."
            )
        folded_w, folded_b = fold_bn(weight, bias, gamma, beta, mean, var, eps)
        slot = self._bias_slot()
        self._canonical = (_keep(weight), None if slot is None else _keep(slot))
        if slot is not None:
            slot.copy_(folded_b)
        weight.copy_(folded_w)

    def _bias_slot(self) -> Optional[Tensor]:
        """Where deploy stores the folded bias: BatchNorm's beta, else the operator's bias (or nowhere)."""
        return self.bn.bias if self.bn.bias is not None else self.op.bias

    def _kept_canonical(self) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """The (W, bias slot) kept when deploy was entered, on the parameters' device, if the parameters
        still hold exactly their fold (not trained or changed since, same statistics); else None."""
        kept = self._canonical
        weight, slot = self.op.weight, self._bias_slot()
        if kept is None or (kept[1] is None) != (slot is None):
            return None
        kept_w, kept_slot = (None if t is None else t.to(weight.device) for t in kept)
        if kept_w.dtype != weight.dtype or kept_w.shape != weight.shape:
            return None
        gamma, beta, mean, var, eps = self._bn_tensors()
        if beta is not None:
            folded_w, folded_b = fold_bn(kept_w, self.op.bias, gamma, kept_slot, mean, var, eps)
        else:
            folded_w, folded_b = fold_bn(kept_w, kept_slot, gamma, None, mean, var, eps)
        if not torch.equal(folded_w.to(weight.dtype), weight):
            return None
        if slot is not None and (
            kept_slot.dtype != slot.dtype or not torch.equal(folded_b.to(slot.dtype), slot)
        ):
            return None
        return kept_w, kept_slot

    def _unfolded(self) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """(W, b, beta) of deploy's folded parameters, the block's one unfold: the values kept on entering
        deploy where the parameters still hold their fold, else the inverse of the fold (:func:`unfold_bn`,
        :func:`unfold_bn_beta`); new tensors where folded into, the stored tensor where not."""
        weight, bias = self.op.weight, self.op.bias
        gamma, beta, mean, var, eps = self._bn_tensors()
        kept = self._kept_canonical()
        if kept is not None:
            return (kept[0], bias, kept[1]) if beta is not None else (kept[0], kept[1], None)
        if beta is not None:  # b' lives in beta's place
            unfolded_w, _ = unfold_bn(weight, None, gamma, None, mean, var, eps)
            unfolded_beta = unfold_bn_beta(beta, bias, gamma, mean, var, eps).to(beta.dtype)
            return unfolded_w.to(weight.dtype), bias, unfolded_beta
        unfolded_w, unfolded_b = unfold_bn(weight, bias, None, None, mean, var, eps)
        return unfolded_w.to(weight.dtype), None if bias is None else unfolded_b.to(bias.dtype), None

    def _unfold_(self) -> None:
        """Undo :meth:`_fold_` in place (leaving deploy)."""
        weight, bias, beta = self._unfolded()
        self.op.weight.copy_(weight)
        if self.bn.bias is not None:
            self.bn.bias.copy_(beta)
        elif self.op.bias is not None:
            self.op.bias.copy_(bias)
        self._canonical = None

    def _folded_zero_bias(self) -> Tensor:
        """Deploy's bias where there is no slot to store b' (neither BatchNorm affine nor an operator
        bias): the fold of a zero bias, -mean / sqrt(var + eps), computed per call."""
        with torch.no_grad():
            bn = self.bn
            scale = bn_scale(None, bn.running_var, bn.eps, fold_dtype(self.op.weight.dtype))
            return fold_bias(None, None, bn.running_mean, scale)

    def _canonical_tensors(self) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """(W, b, gamma, beta) as eval mode sees them, unfolded if the block is in deploy."""
        weight, bias = self.op.weight, self.op.bias
        gamma, beta = self.bn.weight, self.bn.bias
        if self._mode is Mode.DEPLOY:
            with torch.no_grad():
                weight, bias, beta = self._unfolded()
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
    def forward(self, input: Tensor) -> Tensor:
        mode = self._mode
        # every module attribute read costs a Python __getattr__: read each once (53 blocks a step)
        op, bn = self.op, self.bn
        if mode is Mode.TRAIN:
            if type(bn) in _PLAIN_BATCHNORMS:
                return bn(op(input))
            return self._normalize_train(bn, op(input))
        mean, var = bn.running_mean, bn.running_var
        if mean is None or var is None or _has_hooks(bn):
            self._refuse(mode)
        if mode is Mode.EVAL:
            return F.batch_norm(op(input), mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
        if op._forward_hooks or op._backward_hooks or op._backward_pre_hooks:
            self._refuse(mode)
        if op._forward_pre_hooks:  # weight_norm / spectral_norm recompute the weight here
            input = self._run_pre_hooks(input, mode)
        x, spec = self._geometry(op, input)
        weight, gamma, beta = op.weight, bn.weight, bn.bias
        if mode is Mode.TUNE:
            tensors = (x, weight, op.bias, gamma, beta, mean, var)
            return _tune(tensors, bn.eps, spec, self.tune_strategy)
        bias = beta if beta is not None else op.bias
        if bias is None:
            bias = self._folded_zero_bias()
        # the folded bias may be kept in BatchNorm's own dtype (a float32 BatchNorm after a bfloat16 conv)
        return op_forward(spec, x, weight, as_dtype(bias, weight.dtype))

    def _normalize_train(self, bn: nn.Module, y: Tensor) -> Tensor:
        """Train mode's BatchNorm: the module itself, or only its normalisation (timm BatchNormAct2d)."""
        normalize: Optional[Callable[[nn.Module, Tensor], Tensor]] = normalization_only(bn)
        if normalize is None:
            return bn(y)
        if hook_kinds(bn):
            self._refuse(Mode.TRAIN)
        return normalize(bn, y)

    def _run_pre_hooks(self, x: Tensor, mode: Mode) -> Tensor:
        """The operator's forward pre-hooks, as calling the operator would run them, for the input they
        return (tune and deploy call no module, but hooks such as weight_norm must still run)."""
        op = self.op
        args: Tuple[Any, ...] = (x,)
        kwargs: dict = {}
        for hook_id, hook in list(op._forward_pre_hooks.items()):
            if hook_id in op._forward_pre_hooks_with_kwargs:
                result = hook(op, args, kwargs)
                if result is not None:
                    args, kwargs = result
            else:
                result = hook(op, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        if mode is Mode.DEPLOY:
            self._refuse(mode)  # a hook that replaced the weight since deploy was entered
        return args[0] if args else kwargs["input"]


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_pre_hooks
        or module._forward_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _tune(tensors: Tuple[Any, ...], eps: float, spec: OpSpec, requested: str) -> Tensor:
    """Tune's forward of (x, W, b, gamma, beta, running_mean, running_var): the autograd function where
    something needs a gradient, else the same computation without it."""
    if is_compiling():  # plain operations inductor can fuse; eager below is unchanged
        return compiled_tune(*tensors, eps, spec)
    x, weight, running_var = tensors[0], tensors[1], tensors[6]
    compute_dtype = autocast_dtype(x)
    strategy = choose_strategy(spec, x, weight, compute_dtype, requested)
    if strategy == "output" and running_var.dtype != weight.dtype:
        strategy = "weight"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors[:5]):
        return TuneFunction.apply(*tensors, eps, spec, compute_dtype, strategy)
    with autocast_off(x):
        return tune_forward(as_dtype(x, compute_dtype), *tensors[1:], eps, spec, strategy)


def _keep(t: Tensor) -> Tensor:
    """A copy of ``t`` off the accelerator (deploy keeps the canonical values there, costing no device
    memory); meta tensors stay meta."""
    return t.detach().clone() if t.device.type in ("cpu", "meta") else t.detach().to("cpu")


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
    def from_modules(cls, conv: nn.Module, bn: nn.Module, mode: Union[str, Mode] = "train") -> ConvBN:
        """A block around an existing convolution and BatchNorm (the same module objects, registered as
        ``.conv`` and ``.bn``: parameters are shared, not copied; state_dict keys stay ``conv.*``/``bn.*``).

        ``conv``: nn.Conv1d/2d/3d, a subclass keeping their forward, or timm's Conv2dSame. ``bn``: any
        BatchNorm with BatchNorm's or SyncBatchNorm's forward, torchvision's FrozenBatchNorm2d, timm's
        BatchNormAct2d / SyncBatchNormAct / FrozenBatchNormAct2d (of which the block computes only the
        normalisation). Anything else raises TypeError (ValueError for a channel mismatch or a mode the
        pair cannot serve) with :func:`convbn_unsupported_reason`'s reason.
        """
        if isinstance(conv, nn.Linear):
            raise TypeError(
                "ConvBN.from_modules needs a convolution; use LinearBN.from_modules for nn.Linear"
            )
        return cls._wrap(conv, bn, mode)

    def _geometry(self, conv: nn.Module, x: Tensor) -> Tuple[Tensor, OpSpec]:
        if is_tf_same_conv(conv):
            pads, pad_mode = tf_same_pads(conv, x), "constant"
        else:
            pads = _padding_pairs(conv)
            if pads is None:  # what the convolution pads itself
                return x, OpSpec("conv", conv.stride, conv.padding, conv.dilation, conv.groups)
            pad_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        if any(pads):
            x = F.pad(x, pads, mode=pad_mode)
        return x, OpSpec("conv", conv.stride, (0,) * len(conv.kernel_size), conv.dilation, conv.groups)


def _padding_pairs(conv: nn.Module) -> Optional[Tuple[int, ...]]:
    """F.pad-style pads (last dimension first) when padding is not a symmetric int per side."""
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


def _padding_ints(conv: nn.modules.conv._ConvNd) -> Tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) * len(conv.kernel_size)
    return tuple(conv.padding)


class LinearBN(ConvBNBase):
    """Linear layer followed by BatchNorm1d, with the four modes.

    Input ``[N, features]``, or ``[..., features]`` normalised as the flattened ``[M, features]`` view
    (as timm's LeViT applies BatchNorm1d after a Linear). Used for classifier bottlenecks. Arguments as
    for ``nn.Linear`` and ``nn.BatchNorm1d``.
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
    def from_modules(cls, linear: nn.Module, bn: nn.Module, mode: Union[str, Mode] = "train") -> LinearBN:
        """A block around an existing nn.Linear and BatchNorm1d (or SyncBatchNorm), the same module objects
        as ``.linear`` and ``.bn``; TypeError/ValueError with the reason for pairs it cannot compute."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LinearBN.from_modules needs an nn.Linear, got {type(linear).__name__}")
        return cls._wrap(linear, bn, mode)

    def _geometry(self, op: nn.Module, x: Tensor) -> Tuple[Tensor, OpSpec]:
        return x, LINEAR

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() == 2:  # [N, features]; other widths fail in F.linear as for nn.Linear
            return super().forward(input)
        features = self.linear.in_features
        if input.dim() == 0 or input.shape[-1] != features:
            raise ValueError(
                f"LinearBN expects input of shape [..., {features}] (features last), got {tuple(input.shape)}"
            )
        # BatchNorm1d over the last dimension: the [M, features] view, as timm's LeViT normalises
        out = super().forward(input.reshape(-1, features))
        return out.reshape(input.shape[:-1] + (out.shape[-1],))


def convbn_unsupported_reason(
    op: nn.Module, bn: nn.Module, modes: Sequence[Union[str, Mode]] = MODE_CHOICES
) -> Optional[str]:
    """None if ``op`` followed by ``bn`` can become a block (``ConvBN.from_modules`` for a convolution,
    ``LinearBN.from_modules`` for nn.Linear) that computes right in each of ``modes``; otherwise a
    one-line reason, e.g. "StdConv2d (timm.layers.std_conv) has its own forward, ..." or "... BatchNorm
    has none (track_running_stats=False) ...". Mode reasons come from hooks the mode would skip, missing
    running statistics, and (deploy) weights produced by a parametrization or a pre-hook."""
    problem = pair_problem(op, bn)
    if problem is not None:
        return problem[1]
    name = "LinearBN" if isinstance(op, nn.Linear) else "ConvBN"
    for mode in modes:
        reason = mode_problem(op, bn, Mode.parse(mode).value, name)
        if reason is not None:
            return reason
    return None
