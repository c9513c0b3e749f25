"""Forms of compiled Tune measured against each other and PyTorch's pass (an experiment; the library is not
changed by it).

traffic_count.py (beside this file) counts what each form moves outside the convolutions. The forms:

- "ckpt": the library's compiled Tune (tune_compiled.py): W * s in forward, recomputed in backward.
- "hybrid": W * s in forward, not kept; in backward the incoming gradient scaled per channel, the
  operator's backward run with W (so no recomputed W * s, and dL/dW comes straight out of it), gamma's
  share from dL/dW and W.
- "output": the operator with W, its output scaled per channel (inside the fused elementwise tail),
  backward as the hybrid's: no weight-sized fold at all.
- "mixed": per convolution with W weights and A output elements, "output" where A < 5 W (cheaper by the
  count even where the gradient must be scaled apart) and "ckpt" elsewhere.
- "split": W * s in forward, not kept; in backward dL/dW' first (the operator's weight backward, which
  needs W' only for its shape), then one elementwise pass over W and dL/dW' that gives dL/dW = dL/dW' * s,
  gamma's share sum_k dL/dW'_k W_k and the recomputed W' = W * s, then dL/dx with W'. Against "ckpt" it
  saves one read of W per step (inductor fuses the three into one loop).
- "pass": torchvision's ResNet-50 with the same weights, compiled with PyTorch's pass.

The backward of "hybrid" and "output" is eager Tune's "output" strategy (tune._backward_output). Full SGD
steps, rounds in a Williams order (every form in every place, after every other equally often); each pair's
median per-round ratio with its exact 90 % interval. First each form is checked against eager Tune in
float64 on the test suite's small net. Usage, from the repository root:

    PYTHONPATH=. python benchmarks/cpu-resnet50-peers/forms/forms_ab.py N HW ROUNDS [FORMS]

FORMS a comma-separated list, "pass,ckpt,output,mixed" if left out.
"""

import copy
import json
import os
import statistics as st
import sys
import time

import torch
from torch import nn

import tllib_tune.modules.convbn as cb
from tllib_tune import set_mode
from tllib_tune.benchmark.measure import Net, _realistic_bn_, timing_order
from tllib_tune.benchmark.peers import compile_settings, fresh_compile_state, torchvision_peer
from tllib_tune.benchmark.stats import round_ratio_interval
from tllib_tune.models import get_model
from tllib_tune.modules.autocast import autocast_dtype
from tllib_tune.modules.fold import bn_scale, channel_view, fold_bias, fold_dtype, fold_weight
from tllib_tune.modules.ops import op_backward, op_forward, op_output_numel, output_shape
from tllib_tune.modules.tune import _backward_output
from tllib_tune.modules.tune_compiled import compiled_tune as checkpoint_tune
from tllib_tune.utils.memory import SavedTensorMeter


class OutputBackwardOp(torch.autograd.Function):
    """op(x, W * s) + b' ("hybrid", ``fold``) or op(x, W) * s + b' ("output"), backward by scaling the
    gradient; keeps x (and W, s) only."""

    @staticmethod
    def forward(ctx, x, weight, scale, folded_b, spec, fold):
        ctx.save_for_backward(x, weight, scale)
        ctx.spec = spec
        if fold:
            return op_forward(spec, x, fold_weight(weight, scale), folded_b)
        out = op_forward(spec, x, weight, None)
        shape = output_shape(out.dim())
        return out * scale.view(shape) + folded_b.view(shape)

    @staticmethod
    def backward(ctx, g):
        x, weight, scale = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], True, True, True)
        grad_x, grad_w, grad_scale, grad_b = _backward_output(ctx.spec, g, x, weight, scale, need)
        return grad_x, grad_w, grad_scale, grad_b, None, None


class SplitBackwardOp(torch.autograd.Function):
    """op(x, W * s) + b', keeping x (and W, s) only; backward in the order "split" describes."""

    @staticmethod
    def forward(ctx, x, weight, scale, folded_b, spec):
        ctx.save_for_backward(x, weight, scale)
        ctx.spec = spec
        return op_forward(spec, x, fold_weight(weight, scale), folded_b)

    @staticmethod
    def backward(ctx, g):
        x, weight, scale = ctx.saved_tensors
        _, grad_folded_w, grad_b = op_backward(ctx.spec, g, x, weight, (False, True, True))
        view = channel_view(scale, weight.dim())
        grad_w = grad_folded_w * view
        # fold.channel_dot's sum in plain mul and sum, which inductor puts in the same loop as W'
        share = (grad_folded_w * weight).sum(tuple(range(1, weight.dim())))
        grad_x = None
        if ctx.needs_input_grad[0]:
            # W' made to depend on dL/dW' (0 * finite is exactly 0): the partitioner cannot then keep
            # forward's W' for it, and the scheduler can put it in the loop that reads W and dL/dW'
            folded_w = torch.addcmul(weight, grad_folded_w, torch.zeros_like(view)) * view
            grad_x = op_backward(ctx.spec, g, x, folded_w, (True, False, False))[0]
        return grad_x, grad_w, share, grad_b, None


def _form(apply):
    """A form: ``apply(x, W, s, b', spec)`` in float32 and float64 without autocast, "ckpt" otherwise."""

    def form(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec):
        if autocast_dtype(x) != weight.dtype or weight.dtype not in (torch.float32, torch.float64):
            return checkpoint_tune(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec)
        scale = bn_scale(gamma, running_var, eps, fold_dtype(weight.dtype))
        folded_b = fold_bias(bias, beta, running_mean, scale)
        return apply(x, weight, scale, folded_b, spec)

    return form


hybrid_tune = _form(lambda x, w, s, b, spec: OutputBackwardOp.apply(x, w, s, b, spec, True))
output_tune = _form(lambda x, w, s, b, spec: OutputBackwardOp.apply(x, w, s, b, spec, False))
split_tune = _form(SplitBackwardOp.apply)


def mixed_tune(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec):
    form = output_tune if op_output_numel(spec, x, weight) < 5 * weight.numel() else checkpoint_tune
    return form(x, weight, bias, gamma, beta, running_mean, running_var, eps, spec)


FORMS = {
    "ckpt": checkpoint_tune,
    "hybrid": hybrid_tune,
    "output": output_tune,
    "mixed": mixed_tune,
    "split": split_tune,
}


def check_float64(names):
    """Each form under torch.compile against eager Tune in float64. The test suite's conftest sets one
    thread when imported: the timed steps get back the threads the run had."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    from tests.conftest import rel_err
    from tests.modules.test_tune_compiled import _inputs, _net, _step

    net = _net()
    x, up = _inputs()
    set_mode(net, "tune")
    out, grads, _ = _step(net, x, up)
    for name in names:
        cb.compiled_tune = FORMS[name]
        torch._dynamo.reset()
        c_out, c_grads, _ = _step(torch.compile(net, dynamic=False), x, up)
        worst = max([rel_err(c_out, out)] + [rel_err(a, b) for a, b in zip(c_grads, grads)])
        print(f"{name} compiled vs eager tune, float64: largest relative error {worst:.1e}", flush=True)
    cb.compiled_tune = checkpoint_tune
    torch._dynamo.reset()
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


def build(names):
    """(model, optimizer) per form: ours in tune mode, torchvision's for "pass", all with one set of
    weights and BatchNorm statistics."""
    torch.manual_seed(0)
    base = Net(get_model("resnet50", pretrained=False), 1000)
    _realistic_bn_(base)
    models = {}
    for name in names:
        if name == "pass":
            models[name] = torchvision_peer("resnet50", base, 1000)
            continue
        models[name] = copy.deepcopy(base)
        set_mode(models[name].backbone, "tune")
        models[name].train()
    return models, {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}


def measure(names, n, hw, rounds):
    """Compile each form, print its compile time and saved bytes, then time ``rounds`` rounds."""
    models, opts = build(names)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, hw, hw, generator=gen)
    y = torch.randint(0, 1000, (n,), generator=gen)

    def step(k, meter=None):
        cb.compiled_tune = FORMS.get(k, checkpoint_tune)
        t0 = time.perf_counter()
        opts[k].zero_grad(set_to_none=True)
        with meter if meter is not None else torch.enable_grad():
            out = compiled[k](x)
        loss_fn(out, y).backward()
        opts[k].step()
        return time.perf_counter() - t0

    with fresh_compile_state():
        compiled = {k: torch.compile(m, dynamic=False) for k, m in models.items()}
        for k in names:
            with compile_settings("compiled-pass" if k == "pass" else "compiled-tune"):
                print(k, "first step (compile)", round(step(k), 1), "s", flush=True)
        for k in names:
            meter = SavedTensorMeter(exclude=[models[k]])
            step(k, meter)
            print(k, "saved MiB", round(meter.bytes / 2**20, 1), flush=True)
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        for k in names:  # one untimed step each after the meter
            step(k)
        times = {k: [] for k in names}
        for k in timing_order(names, rounds):
            times[k].append(step(k))
        print("recompiled:", counters["stats"]["unique_graphs"] != graphs)
    return times


def main(n, hw, rounds, names):
    unknown = [k for k in names if k not in FORMS and k != "pass"]
    if unknown:
        sys.exit(f"unknown form(s) {', '.join(unknown)}: choose from {', '.join(list(FORMS) + ['pass'])}")
    check_float64([k for k in names if k not in ("ckpt", "pass")])
    times = measure(names, n, hw, rounds)
    print(f"ResNet-50 {n} x {hw}, {rounds} rounds, {torch.get_num_threads()} threads")
    for k in names:
        print(f"  {k:7s} median step {st.median(times[k]):.4f} s")
    for i, p in enumerate(names):
        for q in names[:i]:
            med, lo, hi = round_ratio_interval(times[p], times[q])
            print(
                f"  {p}/{q}: median per-round ratio {med:.4f} (90 % interval {lo:.4f}-{hi:.4f})", flush=True
            )
    print("times_s (every timed step, in the order of the rounds):", json.dumps(times))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.split("Usage, from the repository root:")[1].strip())
    main(
        *map(int, sys.argv[1:4]), (sys.argv[4] if len(sys.argv) == 5 else "pass,ckpt,output,mixed").split(",")
    )
