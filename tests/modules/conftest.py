"""Helpers for the convert_convbn tests: an independent torch.fx count of the exclusive Conv -> BatchNorm
pairs, and the float64 gradient comparison."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from tests.conftest import rel_err
from tllib_tune import set_mode
from tllib_tune.modules.convert_probe import OP_TYPES, is_batchnorm


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


def _source(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """The op module whose output ``node`` (a BatchNorm call's argument) is, used nowhere else; a Linear's
    output may pass through ``flatten(0, 1)`` (LeViT)."""
    if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
        return None
    if node.op == "call_method" and node.target == "flatten" and tuple(node.args[1:]) == (0, 1):
        src = node.args[0]
        ok = isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
        return src.target if ok and isinstance(modules[src.target], nn.Linear) else None
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
    out = model(inp)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    params = {k: v.grad for k, v in model.state_dict(keep_vars=True).items() if v.grad is not None}
    return out.detach(), inp.grad, params


def assert_gradients_close(actual, expected, tol: float, params: bool = True) -> None:
    """Output and input gradient agree, and (``params``) every parameter's gradient, norm-wise."""
    (out_a, gin_a, ga), (out_b, gin_b, gb) = actual, expected
    assert not params or (set(ga) == set(gb) and ga)
    errs = [rel_err(out_a, out_b), rel_err(gin_a, gin_b)] + [rel_err(ga[k], gb[k]) for k in ga if params]
    assert max(errs) <= tol, max(errs)
