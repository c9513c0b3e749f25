"""Apply convert_convbn's plan in place, check the converted model against the original, undo it.

Each pair's block takes the operator's place and a :class:`~.convert_keys.MovedBatchNorm` the BatchNorm's;
:class:`~.convert_keys.SaveKeys` / :class:`~.convert_keys.LoadKeys` go on each pair's lowest common
ancestor. The check (eval mode, on the probe's input): the state dict keeps its keys, order and tensors;
every block and placeholder is called as often as the original modules were; outputs are bitwise the
original's with the blocks in mode "train", and within a float tolerance in mode "tune". On failure the
model is restored and the pairs at fault are found by converting one at a time.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .convbn import ConvBN, ConvBNBase, LinearBN
from .convert_keys import LoadKeys, MovedBatchNorm, SaveKeys
from .convert_probe import Probe, call_model, map_tensors, tensors_in

__all__ = ["Plan", "Job", "convert_and_verify", "restore_flags"]

# Relative tolerance of the tune-mode check (norm-wise, per output), by dtype; other dtypes are not checked.
_TUNE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-9}


@dataclass
class Plan:
    """One pair to convert: the operator and BatchNorm, with their paths."""

    op_name: str
    norm_name: str
    op: nn.Module
    norm: nn.Module
    flattened: bool


@dataclass
class Job:
    """The pairs to convert, what the probe counted, and the input it ran on."""

    plans: List[Plan]
    probe: Probe
    example_input: Any


def restore_flags(model: nn.Module, flags: Dict[nn.Module, bool]) -> None:
    """Each module's training flag back, set through its own ``train()`` (parents first) so that modules
    that drop caches there do so (timm's LeViT caches attention biases in eval mode)."""
    for module in model.modules():
        if module in flags:
            module.train(flags[module])


@dataclass
class _Applied:
    plans: List[Plan]
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


def _apply(model: nn.Module, plans: List[Plan], flags: Dict[nn.Module, bool]) -> _Applied:
    applied = _Applied([], [], [], [])
    by_parent: Dict[str, List[Tuple[str, str, str]]] = defaultdict(list)
    for plan in plans:
        cls = LinearBN if isinstance(plan.op, nn.Linear) else ConvBN
        block = cls.from_modules(plan.op, plan.norm)
        flags[block] = block.training = flags.get(plan.op, plan.op.training)
        placeholder = MovedBatchNorm(plan.norm, plan.op_name)
        flags[placeholder] = placeholder.training = flags.get(plan.norm, plan.norm.training)
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


def convert_and_verify(model: nn.Module, analysis: Job) -> str:
    """Convert ``analysis.plans`` and check the result; undo everything and raise if a check fails."""
    meta = any(t.is_meta for t in tensors_in(analysis.example_input)) or any(
        p.is_meta for p in model.parameters()
    )
    flags = {m: m.training for m in model.modules()}
    try:
        with _exact_kernels():
            return _convert_and_check(model, analysis, meta, flags)
    finally:
        restore_flags(model, flags)


@contextlib.contextmanager
def _exact_kernels() -> Iterator[None]:
    """Deterministic cuDNN algorithms (no benchmark picks that differ between passes) and no TF32, whose
    10-bit products would make tune's folded weights differ from eval by more than round-off."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


def _convert_and_check(model: nn.Module, analysis: Job, meta: bool, flags: Dict[nn.Module, bool]) -> str:
    """The reference outputs in eval mode, the conversion, the checks; undone on any failure."""
    model.eval()
    reference = None if meta else _run(model, analysis.example_input)
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


def _check(
    model: nn.Module, applied: _Applied, analysis: Job, reference: Any, before: Dict, meta: bool
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
    model: nn.Module, analysis: Job, reference: Any, before: Dict, meta: bool, problem: str, flags: Dict
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
