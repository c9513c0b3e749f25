"""The probe behind :func:`~tllib_tune.modules.convert.convert_convbn`: which convolution (or Linear) feeds
which BatchNorm, read from one forward pass and its autograd graph, never from module names.

Forward hooks record every call of a convolution or Linear (its output tensor, that tensor's version
counter and autograd node); forward pre-hooks record every BatchNorm call's input. One walk of the autograd
graph from the outputs counts each node's consumers. A (conv call, BatchNorm call) pair is *exclusive* when
the BatchNorm's input is the conv's output itself (no in-place change in between) and the conv's node has
exactly one consumer, inside that BatchNorm call's own subgraph; a Linear may reach a BatchNorm1d through a
view that only merges leading dimensions (LeViT's ``bn(x.flatten(0, 1))``). Modules pair when every call of
one pairs with a call of the other. Works on the meta device: autograd records there without computing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["OP_TYPES", "is_batchnorm", "map_tensors", "tensors_in", "call_model", "Probe", "run_probe"]

#: The modules a BatchNorm can be folded into.
OP_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

#: Classes that behave as BatchNorm without subclassing _BatchNorm (torchvision's and timm's frozen ones).
_FROZEN_NAMES = ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")

# Autograd nodes of a view that keeps the memory layout (the only ones a Linear may reach a BN through).
_VIEW_NODES = ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0")

_MAX_SUBGRAPH_NODES = 10_000


def is_batchnorm(module: nn.Module) -> bool:
    """True for any BatchNorm: a ``_BatchNorm`` subclass (SyncBatchNorm, timm's BatchNormAct2d ...) or a
    frozen BatchNorm (torchvision's / timm's ``FrozenBatchNorm2d``, whose affine lives in buffers)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return any(cls.__name__ in _FROZEN_NAMES for cls in type(module).__mro__)


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with every tensor in nested tuples, lists and dicts replaced by ``fn(tensor)``."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(v, fn)) for k, v in obj.items())
    return obj


def tensors_in(obj: Any) -> Iterator[Tensor]:
    """Every tensor in nested tuples, lists, dicts (and dataclass-like objects' attributes), in order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from tensors_in(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from tensors_in(getattr(obj, name))


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(example_input)``: a tuple is unpacked into positional arguments, a dict into keyword
    arguments; anything else (a tensor, a list of images) is the one argument."""
    if isinstance(example_input, tuple) and not hasattr(example_input, "_fields"):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


@dataclass
class _OpCall:
    module: nn.Module
    output: Tensor
    version: int
    node: Any  # the output's autograd node when the call returned, or None


@dataclass
class _NormCall:
    module: nn.Module
    input: Optional[Tensor]
    version: int
    output_node: Any = None


@dataclass
class Pairing:
    """A BatchNorm whose every call normalizes the output of one op's calls: ``flattened`` when the op is
    a Linear whose [..., C] output reaches the BatchNorm1d as [N, C]."""

    op: nn.Module
    flattened: bool = False


@dataclass
class Probe:
    """What one forward pass showed: module-level pairs, and the BatchNorms that cannot pair (reason, and
    the op involved where there is one), with each module's number of calls."""

    pairs: Dict[nn.Module, Pairing] = field(default_factory=dict)
    left: Dict[nn.Module, Tuple[str, Optional[nn.Module]]] = field(default_factory=dict)
    op_calls: Dict[nn.Module, int] = field(default_factory=dict)
    norm_calls: Dict[nn.Module, int] = field(default_factory=dict)


class _Recorder:
    def __init__(self) -> None:
        self.ops: List[_OpCall] = []
        self.norms: List[_NormCall] = []
        self._open: Dict[int, List[_NormCall]] = defaultdict(list)

    def op_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            self.ops.append(_OpCall(module, output, output._version, output.grad_fn))

    def norm_pre_hook(self, module: nn.Module, args: Any) -> None:
        x = args[0] if args and isinstance(args[0], Tensor) else None
        call = _NormCall(module, x, -1 if x is None else x._version)
        self.norms.append(call)
        self._open[id(module)].append(call)

    def norm_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self._open[id(module)].pop()
        call.output_node = output.grad_fn if isinstance(output, Tensor) else None


def _with_grad(t: Tensor) -> Tensor:
    """A floating input as a non-leaf requiring grad (a clone of a leaf: in-place ops on it stay legal)."""
    if not t.is_floating_point():
        return t
    leaf = t.clone() if t.is_inference() else t.detach()  # an inference tensor cannot require grad
    return leaf.requires_grad_(True).clone()


def run_probe(
    model: nn.Module, ops: Dict[nn.Module, str], norms: Dict[nn.Module, str], example_input: Any
) -> Probe:
    """Run ``model`` once on ``example_input`` (grad enabled, float inputs requiring grad) with the hooks
    above on ``ops`` and ``norms``, and pair them. The caller puts the model in eval mode; the model's
    own exceptions propagate."""
    recorder = _Recorder()
    handles = [op.register_forward_hook(recorder.op_hook) for op in ops]
    for norm in norms:
        handles.append(norm.register_forward_pre_hook(recorder.norm_pre_hook))
        handles.append(norm.register_forward_hook(recorder.norm_hook))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inputs = map_tensors(example_input, _with_grad)
            outputs = call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    users = _consumers(outputs, recorder)
    input_ids = {id(t) for t in tensors_in(inputs)}
    probe = Probe()
    for call in recorder.ops:
        probe.op_calls[call.module] = probe.op_calls.get(call.module, 0) + 1
    sources: Dict[nn.Module, List[Union[_Left, Tuple[_OpCall, bool]]]] = defaultdict(list)
    by_output = {id(c.output): c for c in recorder.ops}
    by_node = {c.node: c for c in recorder.ops if c.node is not None}
    for call in recorder.norms:
        probe.norm_calls[call.module] = probe.norm_calls.get(call.module, 0) + 1
        sources[call.module].append(_call_source(call, by_output, by_node, users, input_ids))
    for norm in norms:
        _pair_module(norm, sources.get(norm, []), probe)
    return probe


def _consumers(outputs: Any, recorder: _Recorder) -> Dict[Any, List[Any]]:
    """Each autograd node's consumers (one entry per edge), over everything reachable from the outputs
    (an output counts as a consumer of its node) and from the recorded calls."""
    users: Dict[Any, List[Any]] = defaultdict(list)
    roots = []
    for t in tensors_in(outputs):
        if t.grad_fn is not None:
            users[t.grad_fn].append("output")
            roots.append(t.grad_fn)
    roots += [c.output_node for c in recorder.norms if c.output_node is not None]
    roots += [c.node for c in recorder.ops if c.node is not None]
    seen = set()
    stack = roots
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                users[nxt].append(node)
                stack.append(nxt)
    return users


@dataclass
class _Left:
    reason: str
    op: Optional[nn.Module] = None


def _call_source(
    call: _NormCall,
    by_output: Dict[int, _OpCall],
    by_node: Dict[Any, _OpCall],
    users: Dict[Any, List[Any]],
    input_ids: set,
) -> Union[_Left, Tuple[_OpCall, bool]]:
    """(the op call whose output this BatchNorm call normalizes exclusively, flattened?) or why none."""
    x = call.input
    if x is None:
        return _Left("it is called without a tensor as its first argument")
    producer = by_output.get(id(x))
    if producer is not None and producer.output is x:
        if isinstance(producer.module, nn.Linear) and x.dim() != 2:
            return _Left(
                "it normalizes dim 1 of a Linear's [N, L, C] output, not its features", producer.module
            )
        return _exclusive(producer, call, users, via=None) or (producer, False)
    if id(x) in input_ids:
        return _Left("it normalizes the model's input")
    node = x.grad_fn
    if node is None:
        return _Left("its input is outside the autograd graph (computed under no_grad or detached)")
    producer = by_node.get(node.next_functions[0][0]) if len(node.next_functions) == 1 else None
    if producer is None:
        return _Left(f"it follows {describe_node(node)}, not a convolution or Linear")
    if node.name() == "BackwardHookFunctionBackward":
        return _Left(
            "its convolution has a backward hook, which a block cannot honour in every mode; remove it first",
            producer.module,
        )
    if node.name() in _VIEW_NODES and isinstance(producer.module, nn.Linear):
        if _merges_leading_dims(producer.output, x):
            return _exclusive(producer, call, users, via=node) or (producer, True)
    return _Left(
        f"it follows {describe_node(node)} of a {type(producer.module).__name__}'s output", producer.module
    )


def _merges_leading_dims(out: Tensor, x: Tensor) -> bool:
    """True when ``x`` is ``out`` [..., C] seen as [N, C]: channels last and untouched."""
    c = out.shape[-1]
    return (
        out.dim() > 2
        and x.dim() == 2
        and x.shape[1] == c
        and x.shape[0] * c == out.numel()
        and out.is_contiguous()
        and x.is_contiguous()
    )


def _exclusive(producer: _OpCall, call: _NormCall, users: Dict[Any, List[Any]], via: Any) -> Optional[_Left]:
    """None when the op call's output feeds this BatchNorm call and nothing else, else why not."""
    reason = _not_exclusive(producer, call, users, via)
    return None if reason is None else _Left(reason, producer.module)


def _not_exclusive(
    producer: _OpCall, call: _NormCall, users: Dict[Any, List[Any]], via: Any
) -> Optional[str]:
    if call.version != producer.version:
        return "an in-place operation changes its convolution's output before it"
    node = producer.node
    if node is None or call.output_node is None:
        return "its convolution or it ran outside the autograd graph (under no_grad)"
    consumers = users.get(node, [])
    if via is not None:
        if consumers != [via]:
            return "its convolution's output also feeds other operations"
        consumers = users.get(via, [])
    if len(consumers) != 1:
        return "its convolution's output also feeds other operations"
    if not _inside(consumers[0], call.output_node, stop=node):
        return "its input is used outside it (the BatchNorm does not consume it in the autograd graph)"
    return None


def _inside(target: Any, start: Any, stop: Any) -> bool:
    """True when ``target`` is ``start`` or reachable from it without passing ``stop``, looking only at
    nodes created after ``stop`` (a BatchNorm call's own subgraph lies between its input and output)."""
    floor = stop._sequence_nr()
    seen = set()
    stack = [start]
    while stack and len(seen) < _MAX_SUBGRAPH_NODES:
        node = stack.pop()
        if node is target:
            return True
        if node is stop or node in seen or node._sequence_nr() < floor:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


_NODE_KINDS = [
    (r"^Cat|^Stack", "a concat"),
    (r"^Add|^Sub", "an add"),
    (r"^Mul|^Div", "a multiply"),
    (
        r"Relu|Silu|Gelu|Sigmoid|Hardswish|Hardsigmoid|Hardtanh|Elu|Mish|Threshold|Tanh|Softplus|Prelu",
        "an activation",
    ),
    (r"Pool", "a pooling"),
    (r"BatchNorm|^NativeLayerNorm|GroupNorm", "another normalization"),
    (
        r"^Convolution|^Mkldnn.*Convolution|^Cudnn.*Convolution",
        "a functional convolution (no nn.Conv module)",
    ),
    (r"^Addmm|^Mm|^Bmm|^Matmul", "a functional matmul (no nn.Linear module)"),
    (r"^Mean|^Sum|^Amax|^Amin|^Norm", "a reduction"),
    (r"BackwardHookFunction", "a module's backward hook"),
    (
        r"View|Reshape|Permute|Transpose|Expand|Squeeze|Unsqueeze|Slice|Select|Split|Index",
        "a reshape or slice",
    ),
]


def describe_node(node: Any) -> str:
    """The kind of operation an autograd node computes, e.g. "a concat (CatBackward0)"."""
    name = node.name()
    for pattern, kind in _NODE_KINDS:
        if re.search(pattern, name):
            return f"{kind} ({name})"
    return f"an operation {name}"


def _pair_module(norm: nn.Module, sources: List[Union[_Left, Tuple[_OpCall, bool]]], probe: Probe) -> None:
    """Pair ``norm`` with one op when all its calls normalize that op's calls, and all of them."""
    if not sources:
        probe.left[norm] = ("it is never called on the example input (e.g. a training-only branch)", None)
        return
    for source in sources:
        if isinstance(source, _Left):
            probe.left[norm] = (source.reason, source.op)
            return
    ops = {id(call.module): call.module for call, _ in sources}
    if len(ops) > 1:
        probe.left[norm] = ("it is fed by several convolutions", None)
        return
    op = sources[0][0].module
    if probe.op_calls.get(op, 0) != len(sources):
        probe.left[norm] = ("its convolution is also called without it", op)
        return
    probe.pairs[norm] = Pairing(op, flattened=sources[0][1])
