"""Does a leaner Tune function move a whole ResNet-50 step? Full fwd+bwd steps, interleaved in one process.

"generic" is the library's Tune (TuneFunction). "plain" routes every call that uses the "weight" strategy in
one float dtype without autocast, operator bias or non-affine BatchNorm to an autograd function with the same
operations in the same order (bitwise the same results) and none of the dtype / autocast / strategy dispatch.
"lean" is "plain" with the per-channel constants 1/sqrt(var + eps) and -mean computed once, before the run
(as lean_block.py's prototype). "deploy" is the reference. Each round runs the four in turn (order reversed
every other round); printed: each variant's median step and the median and quartiles of its per-round ratio.
Usage: python plain_step_ab.py N HW ROUNDS [THREADS]  (run with the retained-memory MALLOC_* variables).
"""

import copy
import statistics as st
import sys
import time

import torch

import tllib_tune.modules.convbn as cb
from tllib_tune import set_mode
from tllib_tune.models import get_model
from tllib_tune.modules import ConvBNBase
from tllib_tune.modules.fold import fold_bias, fold_bias_backward, fold_weight, fold_weight_backward
from tllib_tune.modules.ops import op_backward, op_forward


class Plain(torch.autograd.Function):
    """TuneFunction's "weight" strategy for one float dtype: same operations, no dispatch.
    With ``consts`` (inv_std, -mean) given, they are not recomputed ("lean")."""

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, mean, var, eps, spec, consts):
        inv_std = consts[0] if consts else torch.rsqrt(var + eps)
        scale = gamma * inv_std
        ctx.save_for_backward(x, weight, gamma, mean, var)
        ctx.eps, ctx.spec, ctx.consts = eps, spec, consts
        if consts:
            folded_b = torch.addcmul(beta, consts[1], scale)
        else:
            folded_b = fold_bias(None, beta, mean, scale)
        return op_forward(spec, x, fold_weight(weight, scale), folded_b)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, gamma, mean, var = ctx.saved_tensors
        need_x, need_w, need_gamma, need_beta = ctx.needs_input_grad[:4]
        consts = ctx.consts
        inv_std = consts[0] if consts else torch.rsqrt(var + ctx.eps)
        scale = gamma * inv_std
        grad_x, grad_fw, grad_fb = op_backward(
            ctx.spec, grad_out, x, fold_weight(weight, scale), (need_x, need_w or need_gamma, True)
        )
        grad_w, share = fold_weight_backward(grad_fw, weight, scale, (need_w, need_gamma))
        if consts:
            grad_gamma = torch.addcmul(share, grad_fb, consts[1]).mul_(inv_std)
        else:
            _, grad_gamma, _ = fold_bias_backward(
                grad_fb, None, mean, share, inv_std, scale, (False, need_gamma, need_beta)
            )
        return grad_x, grad_w, grad_gamma, grad_fb, None, None, None, None, None


n, hw, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if len(sys.argv) > 4:
    torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
model = get_model("resnet50", pretrained=False)
deploy = copy.deepcopy(model)
set_mode(deploy, "deploy")
set_mode(model, "tune")
blocks = [m for m in model.modules() if isinstance(m, ConvBNBase)]
CONSTS = {
    id(b.bn.running_var): (torch.rsqrt(b.bn.running_var + b.bn.eps), -b.bn.running_mean) for b in blocks
}
generic_tune = cb._tune


def routed(lean):
    def tune(tensors, eps, spec, requested):
        x, weight, bias, gamma, beta, mean, var = tensors
        strategy = cb.choose_strategy(spec, x, weight, x.dtype, requested)
        dtypes = {t.dtype for t in (x, weight, gamma, beta, mean, var) if t is not None}
        plain = dtypes <= {torch.float32} or dtypes <= {torch.float64}
        if (
            strategy != "weight"
            or bias is not None
            or gamma is None
            or not plain
            or torch.is_autocast_enabled(x.device.type)
        ):
            return generic_tune(tensors, eps, spec, requested)
        consts = CONSTS[id(var)] if lean else None
        return Plain.apply(x, weight, gamma, beta, mean, var, eps, spec, consts)

    return tune


x = torch.randn(n, 3, hw, hw)
with torch.no_grad():
    g = torch.randn_like(deploy(x))  # the backbone's feature map


def step(m, tune=generic_tune):
    cb._tune = tune
    try:
        t0 = time.perf_counter()
        m(x).backward(g)
        elapsed = time.perf_counter() - t0
    finally:
        cb._tune = generic_tune
    grads = [p.grad for p in m.parameters()]
    for p in m.parameters():
        p.grad = None
    return elapsed, grads


variants = {
    "generic": lambda: step(model),
    "plain": lambda: step(model, routed(False)),
    "lean": lambda: step(model, routed(True)),
    "deploy": lambda: step(deploy),
}
ref = variants["generic"]()[1]
for name in ("plain", "lean"):
    same = all(a is b is None or torch.equal(a, b) for a, b in zip(ref, variants[name]()[1]))
    print(f"{name}: gradients bitwise equal to generic: {same}")
times = {k: [] for k in variants}
names = list(variants)
for r in range(rounds + 2):
    for k in names if r % 2 == 0 else names[::-1]:
        t = variants[k]()[0]
        if r >= 2:
            times[k].append(t)
for k in names:
    print(f"{k:8s} median step {st.median(times[k]):.4f} s")
for a, b in (
    ("generic", "deploy"),
    ("plain", "deploy"),
    ("lean", "deploy"),
    ("plain", "generic"),
    ("lean", "generic"),
):
    ratios = [u / v for u, v in zip(times[a], times[b])]
    q = st.quantiles(ratios, n=4)
    print(f"{a}/{b}: median {st.median(ratios):.4f} (quartiles {q[0]:.4f}-{q[2]:.4f})")
