"""Which operator and BatchNorm layers a ConvBN/LinearBN block can take over, and why not where it cannot.

A block computes the operator and the BatchNorm itself in eval, tune and deploy mode, so it accepts only
layers whose forward it knows:

* operators: ``nn.Conv1d/2d/3d`` (any padding, padding_mode, groups, dilation) and ``nn.Linear``, and their
  subclasses that do not override ``forward``/``_conv_forward``; timm's ``Conv2dSame`` (TF "same" padding,
  computed from the input size on every call, as its forward does).
* BatchNorms: ``_BatchNorm`` subclasses with BatchNorm's or SyncBatchNorm's forward; torchvision's
  ``FrozenBatchNorm2d`` (statistics and affine parameters in buffers); timm's ``BatchNormAct2d``,
  ``SyncBatchNormAct`` and ``FrozenBatchNormAct2d``, of which the block computes only the normalisation
  (:func:`normalization_only`): their drop and activation are for the caller to apply after the block.

timm and torchvision are looked up in ``sys.modules`` only: a layer of theirs cannot exist before they
are imported, and this module works without either installed.
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any, Callable, List, Optional, Tuple, Type, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

__all__ = [
    "Problem",
    "pair_problem",
    "mode_problem",
    "deploy_problem",
    "normalization_only",
    "is_tf_same_conv",
    "tf_same_pads",
    "norm_channels",
    "hook_kinds",
]

#: (exception type, one-line reason) for a pair or a mode a block cannot serve.
Problem = Tuple[Type[Exception], str]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)


_R = TypeVar("_R")


def _per_class(rule: Callable[[type], _R]) -> Callable[[type], _R]:
    """Cache ``rule(cls)`` per class, weakly (parametrize creates a class per parametrized module)."""
    cache: Any = weakref.WeakKeyDictionary()

    @functools.wraps(rule)
    def cached(cls: type) -> _R:
        try:
            return cache[cls]
        except KeyError:
            cache[cls] = result = rule(cls)
            return result

    return cached


def _external(module: str, name: str) -> Optional[type]:
    """A class of an optional library (timm, torchvision) if that library is imported, else None."""
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _describe(cls: type) -> str:
    return f"{cls.__name__} ({cls.__module__})"


def _frozen_transform(bn: nn.Module, x: Tensor) -> Tensor:
    """A frozen BatchNorm's affine transform with its buffers (timm FrozenBatchNormAct2d without act)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@_per_class
def _norm_rule(cls: type) -> Tuple[str, Optional[Callable[[nn.Module, Tensor], Tensor]]]:
    """("plain" | "frozen" | "", normalisation-only forward or None) for a BatchNorm-like class.

    "" means unsupported; a None forward means the block calls the module itself in train mode."""
    forward = getattr(cls, "forward", None)
    act = _external("timm.layers.norm_act", "BatchNormAct2d")
    sync_act = _external("timm.layers.norm_act", "SyncBatchNormAct")
    frozen_act = _external("timm.layers.norm_act", "FrozenBatchNormAct2d")
    frozen = _external("torchvision.ops.misc", "FrozenBatchNorm2d")
    if issubclass(cls, _BatchNorm):
        if forward in _PLAIN_FORWARDS:
            return "plain", None
        if act is not None and forward is act.forward:
            return "plain", _BatchNorm.forward
        if sync_act is not None and forward is sync_act.forward:
            return "plain", nn.SyncBatchNorm.forward
        return "", None
    if frozen is not None and issubclass(cls, frozen) and forward is frozen.forward:
        return "frozen", None
    if frozen_act is not None and issubclass(cls, frozen_act) and forward is frozen_act.forward:
        return "frozen", _frozen_transform
    return "", None


def normalization_only(bn: nn.Module) -> Optional[Callable[[nn.Module, Tensor], Tensor]]:
    """For a BatchNorm whose forward does more than normalise (timm's BatchNormAct2d, SyncBatchNormAct,
    FrozenBatchNormAct2d), the function ``f(bn, x)`` computing only its train-mode normalisation (batch
    statistics and running-stat updates as BatchNorm's forward does them); None for the others, which the
    block calls as they are."""
    return _norm_rule(type(bn))[1]


def norm_channels(bn: nn.Module) -> int:
    """The number of channels a BatchNorm-like layer normalises."""
    num = getattr(bn, "num_features", None)
    return int(num) if num is not None else int(bn.running_var.shape[0])


def _norm_ndims(bn: nn.Module) -> Optional[Tuple[int, ...]]:
    """The input ranks the BatchNorm's own forward accepts (None: any rank from 2 on)."""
    if isinstance(bn, nn.BatchNorm1d):
        return (2, 3)
    if isinstance(bn, nn.BatchNorm2d) or _norm_rule(type(bn))[0] == "frozen":
        return (4,)
    if isinstance(bn, nn.BatchNorm3d):
        return (5,)
    return None


def is_tf_same_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` computes with timm's Conv2dSame forward (TF "same" padding from the input size)."""
    return _is_tf_same_class(type(conv))


@_per_class
def _is_tf_same_class(cls: type) -> bool:
    same = _external("timm.layers.conv2d_same", "Conv2dSame")
    return same is not None and getattr(cls, "forward", None) is same.forward


def tf_same_pads(conv: nn.Conv2d, x: Tensor) -> Tuple[int, ...]:
    """F.pad-style pads (last dimension first) of TensorFlow's "SAME" padding for input ``x``: the total
    per dimension is max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0),
    one half before (rounded down) and the rest after."""
    pads: List[int] = []
    for size, k, s, d in reversed(list(zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.dilation))):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def _lazy(cls: type) -> str:
    return f"{_describe(cls)} is a lazy module not initialised yet; run one forward first"


def _op_problem(op: nn.Module) -> Tuple[Optional[Problem], int]:
    """(problem or None, rank of the operator's output as the BatchNorm sees it)."""
    cls = type(op)
    if isinstance(op, LazyModuleMixin) and op.has_uninitialized_params():
        return (
            ValueError,
            f"{_describe(cls)} is a lazy module not initialised yet; run one forward first",
        ), 0
    if isinstance(op, nn.Linear):
        if cls.forward is nn.Linear.forward:
            return None, 2
        return (TypeError, f"{_describe(cls)} has its own forward, which the fold cannot reproduce"), 0
    if isinstance(op, nn.modules.conv._ConvNd) and op.transposed:
        return (TypeError, f"{_describe(cls)} is a transposed convolution; only Conv1d/2d/3d fold here"), 0
    base = next((c for c in _CONVS if isinstance(op, c)), None)
    if base is None:
        return (TypeError, f"{_describe(cls)} is not an nn.Conv1d/2d/3d or nn.Linear"), 0
    if cls._conv_forward is base._conv_forward and (cls.forward is base.forward or is_tf_same_conv(op)):
        return None, _CONVS.index(base) + 3
    return (TypeError, f"{_describe(cls)} has its own forward, which the fold cannot reproduce"), 0


def _norm_problem(bn: nn.Module) -> Optional[Problem]:
    cls = type(bn)
    if isinstance(bn, LazyModuleMixin) and bn.has_uninitialized_params():
        return ValueError, _lazy(cls)
    if _norm_rule(cls)[0]:
        return None
    if isinstance(bn, _BatchNorm):
        return TypeError, f"{_describe(cls)} has its own forward, which the fold cannot reproduce"
    return TypeError, f"{_describe(cls)} is not a BatchNorm (nor torchvision's FrozenBatchNorm2d)"


def pair_problem(op: nn.Module, bn: nn.Module) -> Optional[Problem]:
    """Why ``op`` followed by ``bn`` cannot become a block at all (whatever the mode), or None."""
    problem, rank = _op_problem(op)
    problem = problem or _norm_problem(bn)
    if problem is not None:
        return problem
    ndims = _norm_ndims(bn)
    if ndims is not None and rank not in ndims:
        return TypeError, (
            f"{type(bn).__name__} normalises {'/'.join(f'{n}-d' for n in ndims)} input but "
            f"{type(op).__name__} produces {rank}-d output"
        )
    channels, produced = norm_channels(bn), op.out_features if rank == 2 else op.out_channels
    if channels != produced:
        return ValueError, (
            f"{type(bn).__name__} has {channels} features but the {type(op).__name__} produces "
            f"{produced} channels"
        )
    return None


def hook_kinds(module: nn.Module, pre: bool = True) -> List[str]:
    """The kinds of hooks registered on ``module`` ("forward hook", ...); ``pre=False`` leaves out
    forward pre-hooks (which a block runs itself before folding)."""
    kinds = [
        ("forward pre-hook", module._forward_pre_hooks if pre else None),
        ("forward hook", module._forward_hooks),
        ("backward hook", module._backward_hooks),
        ("backward pre-hook", module._backward_pre_hooks),
    ]
    return [kind for kind, hooks in kinds if hooks]


def mode_problem(op: nn.Module, bn: nn.Module, mode: str, name: str = "ConvBN") -> Optional[str]:
    """Why a block (called ``name`` in messages) of this pair cannot compute right in ``mode``, or None:
    missing running statistics, hooks the mode would skip, weights deploy cannot fold in place."""
    if mode != "train" and (bn.running_mean is None or bn.running_var is None):
        return (
            f"{name}: mode {mode!r} computes with BatchNorm's running statistics, but this block's "
            "BatchNorm has none (track_running_stats=False). Use mode 'train', or build the BatchNorm "
            "with track_running_stats=True."
        )
    bn_hooks = hook_kinds(bn)
    if bn_hooks and (mode != "train" or normalization_only(bn) is not None):
        how = "without calling it" if mode != "train" else "computing only its normalisation"
        return (
            f"{name}: the BatchNorm ({type(bn).__name__}) has a {bn_hooks[0]}, which mode {mode!r} would "
            f"not run (it computes the BatchNorm {how}). Remove the hook, or hook the block instead."
        )
    op_name = type(op).__name__
    op_hooks = hook_kinds(op, pre=False)
    if op_hooks and mode in ("tune", "deploy"):
        return (
            f"{name}: the {op_name} has a {op_hooks[0]}, which needs the {op_name}'s own output; mode "
            f"{mode!r} never computes it (it runs one folded {op_name}). Use mode 'eval' or 'train', or "
            "remove the hook (a hook on the block itself sees the block's output)."
        )
    if mode == "deploy":
        return deploy_problem(op, bn, name)
    return None


def deploy_problem(op: nn.Module, bn: nn.Module, name: str = "ConvBN") -> Optional[str]:
    """Why deploy cannot fold into (or unfold from) this pair's tensors in place, or None."""
    op_name = type(op).__name__
    slots = ["weight"] + (["bias"] if bn.bias is None and op.bias is not None else [])
    for slot in slots:
        if slot not in op._parameters:
            return (
                f"{name}: the {op_name}'s {slot} is not a Parameter of its own (it is computed by a "
                "parametrization or by a forward pre-hook such as torch.nn.utils.weight_norm or "
                "spectral_norm), so deploy cannot fold into it nor unfold from it. Use mode 'tune', which "
                "computes the same."
            )
    if "parametrizations" in bn._modules:
        return (
            f"{name}: the BatchNorm's tensors are parametrized (torch.nn.utils.parametrize), so deploy "
            "cannot fold into them nor unfold from them. Use mode 'tune', which computes the same."
        )
    return None
