"""Does a leaner Tune function move a whole ResNet-50 step? Full fwd+bwd steps, interleaved in one process.

"generic" is the library's Tune (TuneFunction). "plain" routes every call that uses the "weight" strategy in
one float dtype without autocast, operator bias or non-affine BatchNorm to an autograd function with the same
operations in the same order (bitwise the same results) and none of the dtype / autocast / strategy dispatch.
"lean" is "plain" with the per-channel constants 1/sqrt(var + eps) and -mean computed once, before the run
(as lean_block.py's prototype). "deploy" is the reference. Each round runs the four in turn (order reversed
every other round); printed: each variant's median step and the median and quartiles of its per-round ratio.
Usage: python plain_step_ab.py N HW ROUNDS [THREADS]  (run with the retained-memory MALLOC_* variables).
"""

import torch
from step_ab import GENERIC_TUNE, Bench, bitwise_equal, interleave, parse_args, plain_weight_call, report

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


n, hw, rounds = parse_args()
bench = Bench(n, hw)
blocks = [m for m in bench.model.modules() if isinstance(m, ConvBNBase)]
CONSTS = {
    id(b.bn.running_var): (torch.rsqrt(b.bn.running_var + b.bn.eps), -b.bn.running_mean) for b in blocks
}


def routed(lean):
    def tune(tensors, eps, spec, requested):
        if not plain_weight_call(tensors, spec, requested):
            return GENERIC_TUNE(tensors, eps, spec, requested)
        x, weight, _, gamma, beta, mean, var = tensors
        consts = CONSTS[id(var)] if lean else None
        return Plain.apply(x, weight, gamma, beta, mean, var, eps, spec, consts)

    return tune


variants = {
    "generic": lambda: bench.step(bench.model),
    "plain": lambda: bench.step(bench.model, routed(False)),
    "lean": lambda: bench.step(bench.model, routed(True)),
    "deploy": lambda: bench.step(bench.deploy),
}
ref = variants["generic"]()[1]
for name in ("plain", "lean"):
    print(f"{name}: gradients bitwise equal to generic: {bitwise_equal(ref, variants[name]()[1])}")
times = interleave(variants, rounds)
report(
    times,
    (
        ("generic", "deploy"),
        ("plain", "deploy"),
        ("lean", "deploy"),
        ("plain", "generic"),
        ("lean", "generic"),
    ),
)
