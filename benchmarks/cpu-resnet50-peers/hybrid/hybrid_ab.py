"""Compiled Tune in a third form, measured against the library's compiled Tune and PyTorch's pass.

"hybrid" folds W * s in forward (not saved) and takes the output form in backward: the incoming gradient
scaled per channel (where inductor can fuse it into the kernel before), the operator's backward with W
(so no recomputed W * s and dL/dW straight from it), gamma's share from dL/dW and W. "ckpt" is the library's
compiled Tune (tune_compiled.py: the fold recomputed in backward), "pass" torchvision's ResNet-50 (same
weights) compiled with PyTorch's pass. Full SGD steps, interleaved, order reversed every other round.
Usage, from the repository root: python benchmarks/cpu-resnet50-peers/hybrid/hybrid_ab.py N HW ROUNDS
(first it checks the hybrid against eager Tune in float64 on the test suite's small net).
"""

import copy
import statistics as st
import sys
import time

import torch
from torch import nn

import tllib_tune.modules.convbn as cb
from tllib_tune import set_mode
from tllib_tune.benchmark.measure import Net, _realistic_bn_
from tllib_tune.benchmark.peers import compile_settings, fresh_compile_state, torchvision_peer
from tllib_tune.models import get_model
from tllib_tune.modules.autocast import autocast_dtype
from tllib_tune.modules.fold import bn_scale, channel_dot, fold_bias, fold_dtype, fold_weight
from tllib_tune.modules.ops import op_backward, op_forward, output_shape, reduce_dims
from tllib_tune.modules.tune_compiled import compiled_tune as checkpoint_tune
from tllib_tune.utils.memory import SavedTensorMeter


class FoldedOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, folded_b, spec):
        ctx.save_for_backward(x, weight, scale)
        ctx.spec = spec
        return op_forward(spec, x, fold_weight(weight, scale), folded_b)

    @staticmethod
    def backward(ctx, g):
        x, weight, scale = ctx.saved_tensors
        safe = torch.where(scale == 0, torch.finfo(scale.dtype).tiny ** 0.5, scale)
        scaled = g * safe.view(output_shape(g.dim()))
        need = ctx.needs_input_grad
        grad_x, grad_w, _ = op_backward(ctx.spec, scaled, x, weight, (need[0], True, False))
        grad_scale = channel_dot(grad_w, weight) / safe
        grad_b = g.sum(reduce_dims(g.dim()))
        return grad_x, grad_w, grad_scale, grad_b, None


def hybrid_tune(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec):
    if autocast_dtype(x) != weight.dtype or weight.dtype not in (torch.float32, torch.float64):
        return checkpoint_tune(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec)
    scale = bn_scale(gamma, running_var, eps, fold_dtype(weight.dtype))
    folded_b = fold_bias(bias, beta, running_mean, scale)
    return FoldedOp.apply(x, weight, scale, folded_b, spec)


def check_float64():
    """The hybrid under torch.compile against eager Tune in float64 (the test suite's small net)."""
    from tests.conftest import rel_err
    from tests.modules.test_tune_compiled import _net, _step

    net = _net()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    up = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=gen)
    set_mode(net, "tune")
    out, grads, _ = _step(net, x, up)
    cb.compiled_tune = hybrid_tune
    torch._dynamo.reset()
    c_out, c_grads, _ = _step(torch.compile(net, dynamic=False), x, up)
    cb.compiled_tune = checkpoint_tune
    torch._dynamo.reset()
    worst = max([rel_err(c_out, out)] + [rel_err(a, b) for a, b in zip(c_grads, grads)])
    print(f"hybrid compiled vs eager tune, float64: largest relative error {worst:.1e}", flush=True)


check_float64()
n, hw, rounds = map(int, sys.argv[1:4])
torch.manual_seed(0)
base = Net(get_model("resnet50", pretrained=False), 1000)
_realistic_bn_(base)
peer = torchvision_peer("resnet50", base, 1000)
a, b = base, copy.deepcopy(base)
for m in (a, b):
    set_mode(m.backbone, "tune")
    m.train()
forms = {"ckpt": cb.compiled_tune, "hybrid": hybrid_tune, "pass": cb.compiled_tune}
models = {"ckpt": a, "hybrid": b, "pass": peer}
opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
loss_fn = nn.CrossEntropyLoss()
gen = torch.Generator().manual_seed(1)
x = torch.randn(n, 3, hw, hw, generator=gen)
y = torch.randint(0, 1000, (n,), generator=gen)


def step(k, meter=None):
    cb.compiled_tune = forms[k]
    t0 = time.perf_counter()
    opts[k].zero_grad(set_to_none=True)
    if meter is not None:
        with meter:
            out = compiled[k](x)
    else:
        out = compiled[k](x)
    loss_fn(out, y).backward()
    opts[k].step()
    return time.perf_counter() - t0


with fresh_compile_state():
    compiled = {k: torch.compile(m, dynamic=False) for k, m in models.items()}
    for k in models:
        with compile_settings("compiled-pass" if k == "pass" else "compiled-tune"):
            print(k, "first step (compile)", round(step(k), 1), flush=True)
    for k in models:
        meter = SavedTensorMeter(exclude=[models[k]])
        step(k, meter)
        print(k, "saved MiB", round(meter.bytes / 2**20, 1), flush=True)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    times = {k: [] for k in models}
    names = list(models)
    for r in range(rounds + 2):
        for k in names if r % 2 == 0 else names[::-1]:
            t = step(k)
            if r >= 2:
                times[k].append(t)
    print("recompiled:", counters["stats"]["unique_graphs"] != graphs)
for k in names:
    print(f"{k:7s} median step {st.median(times[k]):.4f} s")
for p, q in (("hybrid", "ckpt"), ("hybrid", "pass"), ("ckpt", "pass")):
    r = [u / v for u, v in zip(times[p], times[q])]
    qs = st.quantiles(r, n=4)
    print(f"{p}/{q}: median {st.median(r):.4f} (quartiles {qs[0]:.4f}-{qs[2]:.4f})", flush=True)
