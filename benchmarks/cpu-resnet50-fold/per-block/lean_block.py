"""Where Tune's per-block time over Deploy goes on the CPU: the block as it is, against a lean prototype.

One ConvBN block (conv without bias, BatchNorm), fwd+bwd in float32, timed interleaved with the same block
in deploy mode (per-round differences, median). "lean" is an autograd function with the per-channel
constants (1/sqrt(var + eps), -mean) computed once and no generic dispatch (dtype, autocast, strategy);
"lean-in-module" calls it from the block's own forward. Both give bitwise Tune's results (printed first).
Usage: python lean_block.py C_IN C_OUT K HW N  (run with the retained-memory MALLOC_* variables).
"""

import copy
import statistics as st
import sys
import time

import torch
import torch.nn.functional as F

import tllib_tune.modules.convbn as cb
from tllib_tune.modules import ConvBN

torch.manual_seed(0)
cin, cout, k, hw, n = [int(v) for v in sys.argv[1:6]]
P = k // 2


class Lean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, gamma, beta, inv, negmean):
        s = gamma * inv
        out = F.conv2d(x, w * s.view(-1, 1, 1, 1), torch.addcmul(beta, negmean, s), 1, P)
        ctx.save_for_backward(x, w, gamma)
        ctx.consts = (inv, negmean)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w, gamma = ctx.saved_tensors
        inv, negmean = ctx.consts
        s = gamma * inv
        sv = s.view(-1, 1, 1, 1)
        gx, gwf, gbf = torch.ops.aten.convolution_backward(
            g, x, w * sv, [w.shape[0]], [1, 1], [P, P], [1, 1], False, [0, 0], 1, [True, True, True]
        )
        share = torch.linalg.vecdot(gwf.flatten(1), w.flatten(1))
        gw = gwf.mul_(sv)
        ggamma = torch.addcmul(share, gbf, negmean).mul_(inv)
        return gx, gw, ggamma, gbf, None, None


m = ConvBN.from_modules(
    torch.nn.Conv2d(cin, cout, k, bias=False, padding=P), torch.nn.BatchNorm2d(cout), "tune"
)
m.tune_strategy = "weight"
with torch.no_grad():
    m.bn.running_var.uniform_(0.5, 2)
    m.bn.weight.uniform_(0.5, 1.5)
    m.bn.running_mean.normal_()
inv = torch.rsqrt(m.bn.running_var + m.bn.eps)
negmean = -m.bn.running_mean
x0 = torch.randn(n, cin, hw, hw)
g = torch.randn(n, cout, hw, hw)
# correctness vs current
xa = x0.clone().requires_grad_()
ya = m(xa)
ya.backward(g)
ref = [xa.grad, m.conv.weight.grad, m.bn.weight.grad, m.bn.bias.grad]
for p in (m.conv.weight, m.bn.weight, m.bn.bias):
    p.grad = None
xb = x0.clone().requires_grad_()
yb = Lean.apply(xb, m.conv.weight, m.bn.weight, m.bn.bias, inv, negmean)
yb.backward(g)
new = [xb.grad, m.conv.weight.grad, m.bn.weight.grad, m.bn.bias.grad]
print("max diffs", float((ya - yb).abs().max()), [float((a - b_).abs().max()) for a, b_ in zip(ref, new)])


def run(f):
    x = x0.clone().requires_grad_()
    t0 = time.perf_counter()
    y = f(x)
    t1 = time.perf_counter()
    y.backward(g)
    return t1 - t0, time.perf_counter() - t1


md = copy.deepcopy(m)
md.mode = "deploy"
orig_tune = cb._tune


def lean_tune(tensors, eps, spec, requested):
    x, wt, bias, gamma, beta, mean, var = tensors
    return Lean.apply(x, wt, gamma, beta, inv, negmean)


def with_lean(x):
    cb._tune = lean_tune
    try:
        return m(x)
    finally:
        cb._tune = orig_tune


fns = {
    "deploy": md,
    "tune": m,
    "lean-in-module": with_lean,
    "lean": lambda x: Lean.apply(x, m.conv.weight, m.bn.weight, m.bn.bias, inv, negmean),
}
res = {k_: [] for k_ in fns}
for _r in range(60):  # 5 warm-up rounds dropped below
    for name, f in fns.items():
        res[name].append(run(f))
for name in ("tune", "lean", "lean-in-module"):
    print(
        name,
        "extra vs deploy: fwd {:.3f} bwd {:.3f} ms".format(
            st.median(a[0] - d[0] for a, d in zip(res[name][5:], res["deploy"][5:])) * 1e3,
            st.median(a[1] - d[1] for a, d in zip(res[name][5:], res["deploy"][5:])) * 1e3,
        ),
    )
