"""Helpers for the convert_convbn tests: an independent torch.fx count of the exclusive Conv -> BatchNorm
pairs, and the float64 gradient comparison."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from tests.conftest import rel_err
from tllib_tune import convert_convbn, set_mode
from tllib_tune.modules.convert_probe import OP_TYPES, is_batchnorm, tensors_in
from tllib_tune.utils.memory import activation_bytes


class _LeafTracer(torch.fx.Tracer):
    """Symbolic tracing with convolutions, Linears and BatchNorms as leaves (and timm's no-trace parts)."""

    def __init__(self) -> None:
        try:
            from timm.layers import _fx

            modules, functions = tuple(_fx.get_notrace_modules()), tuple(_fx.get_notrace_functions())
        except (ImportError, AttributeError):
            modules, functions = (), ()
        super().__init__(autowrap_functions=functions)
        self._notrace = modules

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf = isinstance(m, OP_TYPES) or is_batchnorm(m) or isinstance(m, self._notrace)
        return leaf or super().is_leaf_module(m, qualname)


def _shape_only(user: torch.fx.Node, src: torch.fx.Node) -> bool:
    """True when ``user`` reads only ``src``'s shape (LeViT's ``.reshape_as(x)``), not its values."""
    if user.op != "call_method":
        return False
    if user.target == "size":
        return True
    return user.target in ("reshape_as", "view_as") and user.args[0] is not src


def _source(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """The op module whose output ``node`` (a BatchNorm call's argument) is, used nowhere else; a Linear's
    output may pass through ``flatten(0, 1)`` (LeViT), its shape read elsewhere."""
    if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
        return None
    if node.op == "call_method" and node.target == "flatten" and tuple(node.args[1:]) == (0, 1):
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            return None
        others = [user for user in src.users if user is not node]
        ok = isinstance(modules[src.target], nn.Linear) and all(_shape_only(u, src) for u in others)
        return src.target if ok else None
    if node.op == "call_module" and isinstance(modules[node.target], OP_TYPES):
        return node.target
    return None


def fx_exclusive_pairs(model: nn.Module) -> Set[Tuple[str, str]]:
    """(op path, BatchNorm path) for every BatchNorm all of whose calls normalize, exclusively, the output
    of all the calls of one op, read from a symbolic trace in eval mode: a method independent of the
    converter's probe (autograd graph), against which its pairs are checked."""
    model.eval()
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    op_calls: Counter = Counter()
    sources = defaultdict(list)
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if isinstance(module, OP_TYPES):
            op_calls[node.target] += 1
        elif is_batchnorm(module):
            sources[node.target].append(_source(node.args[0], modules))
    pairs = set()
    for bn, srcs in sources.items():
        if None not in srcs and len(set(srcs)) == 1 and op_calls[srcs[0]] == len(srcs):
            pairs.add((srcs[0], bn))
    return pairs


def gradients(model: nn.Module, x: Tensor, mode: Optional[str] = None):
    """(output, input gradient, {state-dict name: gradient}) of a fixed random projection of the output;
    the names are the unconverted model's, so that a converted model compares key by key."""
    if mode is not None:
        set_mode(model, mode)
    model.zero_grad()
    inp = x.clone().requires_grad_(True)
    out = torch.cat([t.flatten() for t in tensors_in(model(inp))])  # a tensor, or a dict of them
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    params = {k: v.grad for k, v in model.state_dict(keep_vars=True).items() if v.grad is not None}
    return out.detach(), inp.grad, params


def assert_gradients_close(actual, expected, tol: float, params: bool = True) -> None:
    """Output and input gradient agree, and (``params``) every parameter's gradient, norm-wise relative to
    each tensor's norm, or to 1e-6 of the largest gradient's where a gradient is that small (LeViT's
    attention biases get ~1e-17 next to 1e2 elsewhere)."""
    (out_a, gin_a, ga), (out_b, gin_b, gb) = actual, expected
    assert not params or (set(ga) == set(gb) and ga)
    errs = [rel_err(out_a, out_b), rel_err(gin_a, gin_b)]
    if params:
        floor = 1e-6 * max(g.norm().item() for g in gb.values())
        errs += [(ga[k] - gb[k]).norm().item() / max(gb[k].norm().item(), floor) for k in gb]
    assert max(errs) <= tol, max(errs)


def assert_converts_exactly(original: nn.Module, x: Tensor, memory_slack: float = 1.01):
    """Convert a copy of the float64 ``original`` (in eval mode) on ``x`` and check what the issue asks:
    state dict unchanged, tune == the original's eval (torch's own modules) for the output and every
    parameter and input gradient (relative 1e-10), tune's activation memory <= ``memory_slack`` x
    deploy's, and leaving deploy restores the parameters. Returns (converted model, report)."""
    import copy

    model, report = convert_convbn(copy.deepcopy(original), x, return_report=True)
    assert report.verified.startswith("bitwise in mode 'train'"), report.verified
    expected = original.state_dict()
    state = model.state_dict()
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert_gradients_close(gradients(model, x, "tune"), gradients(original, x), 1e-10)
    measured = {}
    for mode in ("tune", "deploy"):
        set_mode(model, mode)
        measured[mode] = activation_bytes(model, x, backward=False)
    assert measured["tune"] <= memory_slack * measured["deploy"], measured
    set_mode(model, "train")  # leaves deploy: the parameters unfold to the original's
    assert max(rel_err(model.state_dict()[k].double(), v.double()) for k, v in expected.items()) <= 1e-12
    return model, report
