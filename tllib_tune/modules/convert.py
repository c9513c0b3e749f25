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

from .convbn import ConvBNBase, convbn_unsupported_reason
from .convert_apply import Job, Plan, convert_and_verify, restore_flags
from .convert_keys import MovedBatchNorm
from .convert_probe import (
    OP_TYPES,
    Probe,
    is_batchnorm,
    run_probe,
)
from .modes import _matches
from .support import hook_kinds

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
class _Analysis:
    job: Job
    report: ConversionReport


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
    if analysis.job.plans:
        report.verified = convert_and_verify(model, analysis.job)
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
            restore_flags(model, flags)
    plans = []
    for norm, name in norms.items():
        if norm in probe.left:
            reason, op = probe.left[norm]
            report.left.append(LeftBatchNorm(name, reason, ops.get(op)))
            continue
        if norm not in probe.pairs:
            continue
        pairing = probe.pairs[norm]
        plan = Plan(ops[pairing.op], name, pairing.op, norm, pairing.flattened)
        problem = _pair_problem(plan, slots, patterns)
        if problem:
            report.left.append(LeftBatchNorm(name, problem, plan.op_name))
        else:
            plans.append(plan)
            report.converted.append((plan.op_name, name))
    return _Analysis(Job(plans, probe, example_input), report)


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


# --- what may convert ---------------------------------------------------------------------------------
def _pair_problem(plan: Plan, slots: Dict[int, int], patterns: List[str]) -> Optional[str]:
    """Why the exclusive pair ``plan`` must stay as it is, or None: excluded, no running statistics,
    shared modules, any hook (a block cannot honour every hook in every mode), or what the block itself
    cannot compute right in every mode (:func:`~.convbn.convbn_unsupported_reason`)."""
    op, norm = plan.op, plan.norm
    if patterns and (_matches(plan.op_name, patterns) or _matches(plan.norm_name, patterns)):
        return "excluded by exclude="
    if getattr(norm, "running_var", None) is None:
        return "it has no running statistics (track_running_stats=False), which tune and deploy need"
    if slots[id(op)] > 1 or slots[id(norm)] > 1:
        return "it or its convolution is registered at several places in the model"
    for who, module in (("its convolution", op), ("it", norm)):
        kinds = hook_kinds(module)
        if kinds:
            origin = _hook_origin(module)
            return (
                f"{who} has a {kinds[0]}{origin}, which a block cannot honour in every mode; remove it first"
            )
    return convbn_unsupported_reason(op, norm)


def _hook_origin(module: nn.Module) -> str:
    """ " (torch.nn.utils.spectral_norm)" when a hook-based spectral_norm / weight_norm is on ``module``."""
    names = {"SpectralNorm": "spectral_norm", "WeightNorm": "weight_norm"}
    found = sorted(
        {names[type(h).__name__] for h in module._forward_pre_hooks.values() if type(h).__name__ in names}
    )
    return f" (torch.nn.utils.{', '.join(found)})" if found else ""
