"""convert_convbn(model): every exclusive Conv -> BatchNorm (or Linear -> BatchNorm1d) pair of any model
becomes a ConvBN/LinearBN block, so that set_mode / using_mode / deploy work on torchvision's, timm's and
users' own models as on our zoo.

Pairs come from the computation (see :mod:`.convert_probe`), never from names. The conversion is in place:
the block takes the convolution's place, a :class:`~.convert_keys.MovedBatchNorm` the BatchNorm's, and
hooks keep ``state_dict()`` the original model's (see :mod:`.convert_keys`). Before returning, the converted
model is checked against the original on the example input; if anything differs it is restored and the
pairs at fault are named. :func:`inspect_convbn` answers what a conversion would do, changing nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import convbn as _convbn
from .convbn import ConvBN, ConvBNBase, LinearBN
from .convert_keys import LoadKeys, MovedBatchNorm, SaveKeys
from .convert_probe import (
    OP_TYPES,
    Probe,
    call_model,
    is_batchnorm,
    map_tensors,
    run_probe,
    tensors_in,
)
from .modes import _matches

__all__ = [
    "convert_convbn",
    "inspect_convbn",
    "ConversionReport",
    "LeftBatchNorm",
    "MovedBatchNorm",
    "init_on_meta",
]

logger = logging.getLogger(__name__)

Exclude = Union[None, str, Sequence[str]]

# Relative tolerance of the tune-mode check (norm-wise, per output), by dtype; other dtypes are not checked.
_TUNE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-9}


@dataclass
class LeftBatchNorm:
    """A BatchNorm that stays as it is: its path, why, and the operator involved where there is one."""

    name: str
    reason: str
    op: Optional[str] = None


@dataclass
class ConversionReport:
    """What :func:`convert_convbn` did (or, from :func:`inspect_convbn`, would do).

    Attributes:
        converted: (operator path, BatchNorm path) per pair; the block sits at the operator's path.
        left: the BatchNorms left as they are, each with its reason.
        already: ConvBN/LinearBN blocks the model had before (their BatchNorms are not counted).
        verified: how the converted model was checked ("" for a dry run).
    """

    converted: List[Tuple[str, str]] = field(default_factory=list)
    left: List[LeftBatchNorm] = field(default_factory=list)
    already: int = 0
    verified: str = ""

    @property
    def total(self) -> int:
        """BatchNorms outside blocks before the conversion."""
        return len(self.converted) + len(self.left)

    def reasons(self) -> Dict[str, List[str]]:
        """Reason -> the BatchNorms left for it, most frequent reason first."""
        groups: Dict[str, List[str]] = defaultdict(list)
        for item in self.left:
            groups[item.reason].append(item.name)
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))

    def summary(self, examples: int = 3) -> str:
        """One line of counts, then one line per reason with its count and a few names."""
        head = f"converted {len(self.converted)} of {self.total} BatchNorms into ConvBN/LinearBN blocks"
        if self.already:
            head += f" (the model already had {self.already} blocks)"
        if not self.converted and not self.left:
            return head + "; nothing to convert"
        if not self.left:
            return head + "; left none"
        lines = [f"{head}; left {len(self.left)}:"]
        for reason, names in self.reasons().items():
            shown = ", ".join(names[:examples]) + (
                f", ... (+{len(names) - examples})" if len(names) > examples else ""
            )
            lines.append(f"  {len(names)} x {reason}: {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class _Plan:
    op_name: str
    norm_name: str
    op: nn.Module
    norm: nn.Module
    flattened: bool


@dataclass
class _Analysis:
    plans: List[_Plan]
    report: ConversionReport
    probe: Probe
    example_input: Any


def inspect_convbn(
    model: nn.Module, example_input: Any = None, *, exclude: Exclude = None
) -> ConversionReport:
    """What :func:`convert_convbn` would convert and leave (with reasons), without changing ``model``.

    Runs the same probe (one eval-mode forward pass on ``example_input``); the training flags are restored.
    On an already converted model it lists the blocks as ``already`` and what is still left.
    """
    return _analyse(model, example_input, exclude).report


def convert_convbn(
    model: nn.Module,
    example_input: Any = None,
    *,
    strict: bool = False,
    verbose: bool = False,
    exclude: Exclude = None,
    return_report: bool = False,
) -> Any:
    """Make every exclusive Conv -> BatchNorm pair of ``model`` a ConvBN (Linear -> BatchNorm1d: LinearBN)
    block, in place, and return ``model`` (``(model, report)`` with ``return_report=True``).

    A pair is a convolution (nn.Conv1d/2d/3d, or nn.Linear) whose output feeds one BatchNorm and nothing
    else, found by running ``model.eval()`` once on ``example_input`` and reading the autograd graph (no
    names). Afterwards ``set_mode(model, "tune")`` and the other modes work; ``state_dict()`` keys, their
    order and values stay the original model's in every mode, so checkpoints load either way.

    Args:
        example_input: what ``model`` is called with: a tensor, a list (one argument, e.g. a detection
            model's list of images), a tuple (positional arguments) or a dict (keyword arguments). Default:
            a small random batch shaped from the first convolution (timm's ``pretrained_cfg`` input size
            when present). Meta-device models and inputs work: pairs are found without computing.
        strict: raise (the model unchanged) if any BatchNorm would be left unconverted.
        verbose: print (and log) :meth:`ConversionReport.summary`.
        exclude: module paths (prefixes or globs, as ``set_mode``'s ``include``) whose pairs to leave alone.
        return_report: also return the :class:`ConversionReport`.

    The converted model is checked before returning: on the example input in eval mode it must compute
    bitwise the same outputs (blocks in mode "train"), close ones in mode "tune", call every block as often
    as the original operator, and keep the state dict. Otherwise every change is undone and a RuntimeError
    names the pairs at fault (the ``exclude=`` fix). On the meta device only the structure is checked.
    """
    analysis = _analyse(model, example_input, exclude)
    report = analysis.report
    if strict and report.left:
        lines = "; ".join(f"{item.name}: {item.reason}" for item in report.left)
        raise ValueError(
            f"convert_convbn(strict=True): {len(report.left)} BatchNorm(s) of {type(model).__name__} would "
            f"stay unconverted ({lines}); the model is unchanged. Use strict=False to convert the rest."
        )
    if analysis.plans:
        report.verified = _convert_verified(model, analysis)
    if verbose:
        print(report.summary())
        logger.info("%s", report.summary())
    else:
        logger.debug("%s", report.summary())
    return (model, report) if return_report else model


@contextlib.contextmanager
def init_on_meta() -> Iterator[None]:
    """Build models inside this context with every parameter and buffer on the meta device (no memory,
    no compute), e.g. to see what :func:`convert_convbn` would do on a 644 M-parameter RegNet::

        with init_on_meta():
            model = torchvision.models.regnet_y_128gf()
        inspect_convbn(model, torch.empty(2, 3, 224, 224, device="meta"))

    Tensors are moved as they are registered, so builders that compute with tensors still work (under
    ``torch.device("meta")`` torchvision's RegNet builder fails). Not thread-safe: it patches nn.Module.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self: nn.Module, name: str, tensor: Optional[Tensor], persistent: bool = True) -> None:
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


# --- analysis -----------------------------------------------------------------------------------------
def _analyse(model: nn.Module, example_input: Any, exclude: Exclude) -> _Analysis:
    """Probe ``model`` and decide, per BatchNorm, convert or leave (with the reason)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_convbn needs an nn.Module, got {type(model).__name__}")
    patterns = [exclude] if isinstance(exclude, str) else list(exclude or [])
    ops, norms, already, slots = _collect(model)
    report = ConversionReport(already=already)
    probe = Probe()
    if norms and not ops:
        report.left = [
            LeftBatchNorm(name, "the model has no convolution or Linear") for name in norms.values()
        ]
    elif norms:
        flags = {m: m.training for m in model.modules()}
        try:
            model.eval()
            probe, example_input = _probe(model, ops, norms, example_input)
        finally:
            _restore_flags(flags)
    plans = []
    for norm, name in norms.items():
        if norm in probe.left:
            reason, op = probe.left[norm]
            report.left.append(LeftBatchNorm(name, reason, ops.get(op)))
            continue
        if norm not in probe.pairs:
            continue
        pairing = probe.pairs[norm]
        plan = _Plan(ops[pairing.op], name, pairing.op, norm, pairing.flattened)
        problem = _pair_problem(plan, slots, patterns)
        if problem:
            report.left.append(LeftBatchNorm(name, problem, plan.op_name))
        else:
            plans.append(plan)
            report.converted.append((plan.op_name, name))
    return _Analysis(plans, report, probe, example_input)


def _collect(model: nn.Module) -> Tuple[Dict[nn.Module, str], Dict[nn.Module, str], int, Dict[int, int]]:
    """(operators, BatchNorms) outside existing blocks, each -> its path; the number of blocks; and how
    many places each module is registered at (by id)."""
    inside, already = set(), 0
    for module in model.modules():
        if isinstance(module, ConvBNBase):
            already += 1
            inside.update(id(sub) for sub in module.modules() if sub is not module)
    slots: Dict[int, int] = defaultdict(int)
    for _, module in model.named_modules(remove_duplicate=False):
        slots[id(module)] += 1
    ops, norms = {}, {}
    for name, module in model.named_modules():
        if id(module) in inside or isinstance(module, MovedBatchNorm):
            continue
        if isinstance(module, OP_TYPES):
            ops[module] = name
        elif is_batchnorm(module):
            norms[module] = name
    return ops, norms, already, slots


def _probe(model: nn.Module, ops: Dict, norms: Dict, example_input: Any) -> Tuple[Probe, Any]:
    """Run the probe on ``example_input`` or, when None, on default inputs until one works."""
    if example_input is not None:
        try:
            return run_probe(model, ops, norms, example_input), example_input
        except Exception as exc:
            raise ValueError(
                f"convert_convbn: {type(model).__name__} failed on example_input ({type(exc).__name__}: "
                f"{exc}); pass an example_input the model accepts in eval mode (a tuple is unpacked into "
                "arguments, a dict into keyword arguments)"
            ) from exc
    candidates = default_example_inputs(model)
    errors = []
    for candidate in candidates:
        try:
            return run_probe(model, ops, norms, candidate), candidate
        except Exception as exc:  # try the next size; the model's own message goes into ours
            errors.append(f"{list(candidate.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise ValueError(
        f"convert_convbn: {type(model).__name__} needs example_input= (it did not run on default inputs: "
        f"{'; '.join(errors)}); e.g. convert_convbn(model, example_input=torch.randn(2, 3, 224, 224)) for an "
        "image model, or example_input=[torch.rand(3, 320, 320)] for a detection model taking a list of "
        "images"
    )


def default_example_inputs(model: nn.Module) -> List[Tensor]:
    """Small random inputs to try, shaped from the model's first convolution (or Linear): timm's
    ``pretrained_cfg["input_size"]`` when present, else 2 x C x 64 x 64 (then larger) for 2-d convs."""
    first = next((m for m in model.modules() if isinstance(m, OP_TYPES)), None)
    if first is None:
        return []
    tensor = next(iter(list(model.parameters()) + list(model.buffers())), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    if isinstance(first, nn.Linear):
        shapes = [(2, first.in_features)]
    else:
        channels, dim = first.in_channels, len(first.kernel_size)
        spatial = {
            1: [(64,), (224,)],
            2: [(64, 64), (224, 224), (299, 299)],
            3: [(4, 32, 32), (16, 112, 112)],
        }
        shapes = [(2, channels) + size for size in spatial.get(dim, [])]
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        size = tuple(cfg.get("input_size", ())) if isinstance(cfg, dict) else ()
        if len(size) == dim + 1 and size[0] == channels:
            shapes = [(2,) + size] + [s for s in shapes if s != (2,) + size]
    generator = torch.Generator().manual_seed(0)
    if device.type == "meta":
        return [torch.empty(shape, device=device, dtype=dtype) for shape in shapes]
    return [torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for shape in shapes]


def _restore_flags(flags: Dict[nn.Module, bool]) -> None:
    for module, training in flags.items():
        module.training = training


# --- what may convert ---------------------------------------------------------------------------------
def _pair_problem(plan: _Plan, slots: Dict[int, int], patterns: List[str]) -> Optional[str]:
    """Why the exclusive pair ``plan`` must stay as it is, or None."""
    op, norm = plan.op, plan.norm
    if patterns and (_matches(plan.op_name, patterns) or _matches(plan.norm_name, patterns)):
        return "excluded by exclude="
    if getattr(norm, "running_var", None) is None:
        return "it has no running statistics (track_running_stats=False), which tune and deploy need"
    if slots[id(op)] > 1 or slots[id(norm)] > 1:
        return "it or its convolution is registered at several places in the model"
    for who, module in (("its convolution", op), ("it", norm)):
        hooks = _hook_kinds(module)
        if hooks:
            return f"{who} has {hooks}, which the block would bypass in tune and deploy; remove them first"
    return _block_problem(op, norm, plan.flattened)


def _hook_kinds(module: nn.Module) -> str:
    """The kinds of hooks ``module`` carries, e.g. "forward pre-hooks (torch.nn.utils.spectral_norm)"."""
    kinds = []
    for attr, kind in (
        ("_forward_pre_hooks", "forward pre-hooks"),
        ("_forward_hooks", "forward hooks"),
        ("_backward_pre_hooks", "backward pre-hooks"),
        ("_backward_hooks", "backward hooks"),
    ):
        hooks = list(getattr(module, attr, {}).values())
        if hooks:
            owners = sorted({_hook_origin(hook) for hook in hooks} - {""})
            kinds.append(kind + (f" ({', '.join(owners)})" if owners else ""))
    return " and ".join(kinds)


def _hook_origin(hook: Any) -> str:
    name = type(hook).__name__
    return {"SpectralNorm": "torch.nn.utils.spectral_norm", "WeightNorm": "torch.nn.utils.weight_norm"}.get(
        name, ""
    )


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _block_problem(op: nn.Module, norm: nn.Module, flattened: bool) -> Optional[str]:
    """Why a ConvBN/LinearBN block cannot compute ``op`` -> ``norm`` in every mode, or None."""
    if isinstance(op, nn.modules.conv._ConvNd) and op.transposed:
        return f"its convolution is transposed ({type(op).__name__}), which ConvBN does not fold"
    if parametrize.is_parametrized(op) or parametrize.is_parametrized(norm):
        return "a weight is parametrized (torch.nn.utils.parametrize), which ConvBN does not support yet"
    check = getattr(_convbn, "convbn_unsupported_reason", None)
    if check is not None:
        return check(op, norm)
    if type(op) not in _PLAIN_CONVS + (nn.Linear,):
        return f"its operator is a {type(op).__name__}, which ConvBN does not support yet"
    if type(norm) not in _PLAIN_NORMS:
        return f"it is a {type(norm).__name__}, which ConvBN does not support yet"
    channels = op.out_features if isinstance(op, nn.Linear) else op.out_channels
    if norm.num_features != channels:
        return f"it has {norm.num_features} features but its operator produces {channels}"
    if flattened:
        return "it normalizes a Linear's [..., C] output flattened to [N, C], which LinearBN does not support"
    if isinstance(op, nn.Linear) and type(norm) is not nn.BatchNorm1d:
        return f"a Linear feeds a {type(norm).__name__}; LinearBN needs BatchNorm1d"
    return None


# --- conversion, checks, undo -------------------------------------------------------------------------
@dataclass
class _Applied:
    plans: List[_Plan]
    blocks: List[ConvBNBase]
    placeholders: List[MovedBatchNorm]
    handles: List[Any]


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    model.get_submodule(parent)._modules[attr] = module


def _common_parent(a: str, b: str) -> str:
    """The path of the lowest module holding both paths ("" for the model itself)."""
    pa, pb = a.split(".")[:-1], b.split(".")[:-1]
    common = []
    for x, y in zip(pa, pb):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def _apply(model: nn.Module, plans: List[_Plan], flags: Dict[nn.Module, bool]) -> _Applied:
    applied = _Applied([], [], [], [])
    by_parent: Dict[str, List[Tuple[str, str, str]]] = defaultdict(list)
    for plan in plans:
        cls = LinearBN if isinstance(plan.op, nn.Linear) else ConvBN
        block = cls.from_modules(plan.op, plan.norm)
        block.training = flags.get(plan.op, plan.op.training)
        placeholder = MovedBatchNorm(plan.norm, plan.op_name)
        placeholder.training = flags.get(plan.norm, plan.norm.training)
        _set_module(model, plan.op_name, block)
        _set_module(model, plan.norm_name, placeholder)
        applied.plans.append(plan)
        applied.blocks.append(block)
        applied.placeholders.append(placeholder)
        parent = _common_parent(plan.op_name, plan.norm_name)
        cut = len(parent) + 1 if parent else 0
        by_parent[parent].append((plan.op_name[cut:], plan.norm_name[cut:], cls.op_attr))
    for parent, pairs in by_parent.items():
        owner = model.get_submodule(parent)
        applied.handles.append(owner.register_state_dict_post_hook(SaveKeys(pairs)))
        applied.handles.append(owner.register_load_state_dict_pre_hook(LoadKeys(pairs)))
    return applied


def _undo(model: nn.Module, applied: _Applied) -> None:
    for handle in applied.handles:
        handle.remove()
    for plan in reversed(applied.plans):
        _set_module(model, plan.op_name, plan.op)
        _set_module(model, plan.norm_name, plan.norm)


def _run(model: nn.Module, example_input: Any) -> Any:
    with torch.no_grad():
        return call_model(model, map_tensors(example_input, lambda t: t.clone()))


def _convert_verified(model: nn.Module, analysis: _Analysis) -> str:
    """Convert ``analysis.plans`` and check the result; undo everything and raise if a check fails."""
    example = analysis.example_input
    meta = any(t.is_meta for t in tensors_in(example)) or any(p.is_meta for p in model.parameters())
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        reference = None if meta else _run(model, example)
        before = model.state_dict(keep_vars=True)
        applied = _apply(model, analysis.plans, flags)
        try:
            problem, verified = _check(model, applied, analysis, reference, before, meta)
        except BaseException:
            _undo(model, applied)
            raise
        if problem is not None:
            _undo(model, applied)
            raise RuntimeError(_fault_message(model, analysis, reference, before, meta, problem, flags))
        return verified
    finally:
        _restore_flags(flags)


def _check(
    model: nn.Module, applied: _Applied, analysis: _Analysis, reference: Any, before: Dict, meta: bool
) -> Tuple[Optional[str], str]:
    """(what differs, or None; how the model was verified)."""
    after = model.state_dict(keep_vars=True)
    if list(after) != list(before):
        missing, extra = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        return f"state_dict keys change (missing {missing[:5]}, new {extra[:5]}, or reordered)", ""
    changed = [
        k for k in before if after[k] is not before[k] and (meta or not torch.equal(after[k], before[k]))
    ]
    if changed:
        return f"state_dict values change: {changed[:5]}", ""
    calls: Dict[nn.Module, int] = defaultdict(int)

    def count(module: nn.Module, args: Any) -> None:
        calls[module] += 1

    handles = [m.register_forward_pre_hook(count) for m in applied.blocks + applied.placeholders]
    try:
        output = _run(model, analysis.example_input)
    except Exception as exc:
        return f"the converted model fails ({type(exc).__name__}: {exc})", ""
    finally:
        for handle in handles:
            handle.remove()
    for plan, block, placeholder in zip(applied.plans, applied.blocks, applied.placeholders):
        if (
            calls[block] != analysis.probe.op_calls[plan.op]
            or calls[placeholder] != analysis.probe.norm_calls[plan.norm]
        ):
            return f"the model does not call the block at {plan.op_name} where it called the original", ""
    if meta:
        return None, "structure only (meta device: nothing is computed)"
    if not _same_outputs(reference, output):
        return "the outputs differ (blocks in mode 'train', model in eval mode)", ""
    return _check_tune(model, applied.blocks, analysis.example_input, reference)


def _same_outputs(expected: Any, actual: Any) -> bool:
    a, b = list(tensors_in(expected)), list(tensors_in(actual))
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not torch.equal(x, y):
            if not x.is_floating_point() or not bool(((x == y) | (x.isnan() & y.isnan())).all()):
                return False
    return True


def _check_tune(
    model: nn.Module, blocks: List[ConvBNBase], example: Any, reference: Any
) -> Tuple[Optional[str], str]:
    """Mode "tune" must agree within a float tolerance where outputs do not depend on values' order."""
    expected = list(tensors_in(reference))
    if not expected or any(t.dtype not in _TUNE_RTOL for t in expected):
        return None, "bitwise in mode 'train' (tune not compared: non-float outputs)"
    for block in blocks:
        block.mode = "tune"
    try:
        actual = list(tensors_in(_run(model, example)))
    finally:
        for block in blocks:
            block.mode = "train"
    if [t.shape for t in actual] != [t.shape for t in expected]:
        return None, "bitwise in mode 'train' (tune not compared: output shapes depend on values)"
    for x, y in zip(expected, actual):
        rtol = _TUNE_RTOL[x.dtype]
        err = (y.double() - x.double()).norm() / x.double().norm().clamp_min(1e-30)
        if not err <= rtol:
            return f"mode 'tune' differs from eval by {float(err):.2e} (relative, tolerance {rtol:g})", ""
    tol = max(_TUNE_RTOL[t.dtype] for t in expected)
    return None, f"bitwise in mode 'train'; mode 'tune' within {tol:g}"


def _fault_message(
    model: nn.Module, analysis: _Analysis, reference: Any, before: Dict, meta: bool, problem: str, flags: Dict
) -> str:
    """Find the pairs at fault (one conversion at a time; only on failure) for the error message."""
    name = type(model).__name__
    if not meta and not _same_outputs(reference, _run(model, analysis.example_input)):
        return (
            f"convert_convbn: {name} gives different outputs on two identical eval-mode passes over the "
            "example input, so the conversion cannot be verified; the model is unchanged. Make its eval-mode "
            "forward deterministic (e.g. torch.use_deterministic_algorithms(True))."
        )
    faults = []
    for plan in analysis.plans:
        applied = _apply(model, [plan], flags)
        try:
            single, _ = _check(model, applied, analysis, reference, before, meta)
        finally:
            _undo(model, applied)
        if single is not None:
            faults.append((plan, single))
    if not faults:
        return (
            f"convert_convbn: the converted {name} would not compute what the original does ({problem}), "
            "though no pair fails alone; the model is restored unchanged. Convert part of it with exclude=."
        )
    where = "; ".join(f"{plan.op_name} -> {plan.norm_name} ({why})" for plan, why in faults[:10])
    more = f" (+{len(faults) - 10} more)" if len(faults) > 10 else ""
    names = [plan.op_name for plan, _ in faults]
    return (
        f"convert_convbn: the converted {name} would not compute what the original does ({problem}); the "
        f"model is restored unchanged. Pairs at fault: {where}{more}. Leave them with exclude={names!r}."
    )
