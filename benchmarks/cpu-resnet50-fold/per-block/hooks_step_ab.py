"""Does Tune without an autograd function move a whole ResNet-50 step? Full fwd+bwd steps, interleaved.

"generic" is the library's Tune (TuneFunction). "hooks" routes every call that uses the "weight" strategy in
one float dtype without autocast, operator bias or non-affine BatchNorm to plain autograd operations:
s = gamma / sqrt(var + eps), W' = W * s and b' = beta - mean * s, then the convolution under
``torch.autograd.graph.saved_tensors_hooks``, whose pack hook stores (W, s) in place of W' and whose unpack
hook recomputes W * s in backward: like TuneFunction, the folded weight is never kept, but autograd's own
backward formulas replace the library's and there is no Python backward. "deploy" is the reference. Each
round runs the three in turn (order reversed every other round); printed: how many convolutions took the
hooks path and had W' packed and unpacked, whether the gradients equal generic's, each variant's median step
and the median and quartiles of its per-round ratios.
Usage: python hooks_step_ab.py N HW ROUNDS [THREADS]  (run with the retained-memory MALLOC_* variables).
Not for the library: nested saved-tensor hooks hide the convolution's saves from an outer hook, which is how
tllib_tune.utils.memory.SavedTensorMeter measures activation memory.
"""

import torch
from step_ab import GENERIC_TUNE, Bench, bitwise_equal, interleave, parse_args, plain_weight_call, report

from tllib_tune.modules.fold import bn_scale, fold_bias, fold_weight
from tllib_tune.modules.ops import op_forward

COUNT = {"routed": 0, "packed": 0, "unpacked": 0}


def hooks_tune(x, weight, gamma, beta, mean, var, eps, spec):
    """Tune's "weight" strategy in plain autograd operations; W' recomputed from (W, s) in backward."""
    scale = bn_scale(gamma, var, eps, weight.dtype)
    folded_w = fold_weight(weight, scale)
    folded_b = fold_bias(None, beta, mean, scale)
    key = (folded_w.data_ptr(), folded_w.shape)

    def pack(t):
        if (t.data_ptr(), t.shape) == key:
            COUNT["packed"] += 1
            return ("folded", weight, scale)
        return t

    def unpack(p):
        if isinstance(p, tuple):
            COUNT["unpacked"] += 1
            return fold_weight(p[1], p[2])
        return p

    COUNT["routed"] += 1
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return op_forward(spec, x, folded_w, folded_b)


def routed(tensors, eps, spec, requested):
    if not plain_weight_call(tensors, spec, requested):
        return GENERIC_TUNE(tensors, eps, spec, requested)
    x, weight, _, gamma, beta, mean, var = tensors
    return hooks_tune(x, weight, gamma, beta, mean, var, eps, spec)


n, hw, rounds = parse_args()
bench = Bench(n, hw)
variants = {
    "generic": lambda: bench.step(bench.model),
    "hooks": lambda: bench.step(bench.model, routed),
    "deploy": lambda: bench.step(bench.deploy),
}
ref = variants["generic"]()[1]
got = variants["hooks"]()[1]
print(
    f"hooks: {COUNT['routed']} convolutions routed, W' packed {COUNT['packed']}, unpacked {COUNT['unpacked']}"
)
close = all(a is b is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ref, got))
same = bitwise_equal(ref, got)
print(f"hooks: gradients bitwise equal to generic: {same}; allclose (rtol 1e-4, atol 1e-6): {close}")
times = interleave(variants, rounds)
report(times, (("generic", "deploy"), ("hooks", "deploy"), ("hooks", "generic")))
