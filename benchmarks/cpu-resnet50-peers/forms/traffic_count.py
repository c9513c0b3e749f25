"""How much any formulation of compiled Tune can win over PyTorch's compiled pass: a count, not a timing.

The convolutions are the same calls in every formulation; what differs are the memory-bound passes over
weight-sized tensors (and, for the hybrid and output forms, gradient-sized ones) around them. Per
convolution with W weights and A output elements, counted in floats read plus written per training step:

- the pass: forward W' = W * s (read W, write W': 2W); backward dL/dW = dL/dW' * s with gamma's share
  sum(dL/dW' * W) (read dL/dW' and W, write dL/dW: 3W). It keeps W' for backward instead of recomputing it.
- compiled Tune as it is: the pass's 5W plus W * s recomputed in backward (2W).
- split: the fold in forward (2W); in backward the convolution's weight gradient first, then one loop that
  reads dL/dW' and W and writes dL/dW and the recomputed W' (4W), then the input gradient with W'. One read
  of W less than compiled Tune (forms_ab.py's "split"; inductor does fuse the loop).
- hybrid: the fold in forward (2W); in backward the gradient scaled per channel and the convolution's
  backward run with W, so dL/dW comes out of it and gamma's share reads dL/dW and W (2W). Scaling the
  gradient is free where inductor fuses it into the kernel that makes the gradient (a convolution whose
  output feeds a ReLU only); where the unscaled gradient is needed elsewhere too (the last convolution of a
  bottleneck and its shortcut, summed with the identity) it is one more write of A.
- output form: no fold in forward (the output is scaled inside the fused elementwise tail), backward as
  the hybrid's. But inductor lays the convolutions out channels-last, so where it hands a convolution the
  parameter W itself (the output form, compiled Deploy) it copies every weight that is not 1 x 1 into that
  layout before the forward convolution (2W; ResNet-50: 17 convolutions, 11.3 M of the 23.5 M weights, in
  the generated code), which a fold gets for free: it writes W' in that layout in its one pass. (The
  first version of this count left that copy out; forms_ab.py, beside it, times the forms.)
- zero-cost fold: no pass at all (what a convolution kernel that scales W as it loads it would reach).

Each "best" row takes, per convolution, the cheapest of the forms listed. Run:
``python benchmarks/cpu-resnet50-peers/forms/traffic_count.py`` (a few seconds; no timing involved).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from tllib_tune.benchmark.pool import read_rows

SETTINGS = ((8, 112), (16, 224))
BYTES = 4  # float32
#: The runs whose compiled-pass medians give the step the differences are a share of.
RUNS = [Path(__file__).resolve().parents[1] / f"omp-default{k}" for k in (1, 2, 3)]
BANDWIDTH_GB_S = (10.0, 12.0)  # what the fold's passes reach here (docs/benchmarks.md)


def pass_steps() -> dict:
    """(batch, size) -> the lowest and highest median step of compiled-pass over :data:`RUNS`."""
    steps: dict = {}
    for run in RUNS:
        for row in read_rows(str(run)):
            if row["mode"] == "compiled-pass":
                steps.setdefault((row["batch_size"], row["input_size"]), []).append(row["median_s"])
    return {setting: (min(s), max(s)) for setting, s in steps.items()}


def conv_sizes(batch: int, size: int):
    """(name, weight numel, output numel, whether the kernel is 1 x 1) of every convolution of
    torchvision's ResNet-50."""
    model = torchvision.models.resnet50().eval()
    sizes = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(
                lambda m, i, o, n=name: sizes.append(
                    (n, m.weight.numel(), o.numel(), m.weight[0, 0].numel() == 1)
                )
            )
    with torch.no_grad():
        model(torch.zeros(batch, 3, size, size))
    return sizes


def per_conv(name: str, w: int, a: int, pointwise: bool) -> dict:
    """Floats moved by each formulation for one convolution (``pointwise``: a 1 x 1 kernel)."""
    fused = not (name.endswith("conv3") or "downsample" in name)  # its output gradient comes from a ReLU only
    scale_grad = 0 if fused else a
    layout_copy = 0 if pointwise else 2 * w
    forms = {
        "pass": 5 * w,
        "compiled Tune (recomputes W * s)": 7 * w,
        "split (one fused backward loop)": 6 * w,
        "hybrid": 4 * w + scale_grad,
        "output form": 2 * w + scale_grad + layout_copy,
        "zero-cost fold": 0,
    }
    forms["best of compiled Tune, hybrid"] = min(forms["compiled Tune (recomputes W * s)"], forms["hybrid"])
    forms["best of all three forms"] = min(forms["best of compiled Tune, hybrid"], forms["output form"])
    return forms


def main() -> None:
    steps = pass_steps()
    for batch, size in SETTINGS:
        totals: dict = {}
        for name, w, a, pointwise in conv_sizes(batch, size):
            for form, floats in per_conv(name, w, a, pointwise).items():
                totals[form] = totals.get(form, 0) + floats
        lo_step, hi_step = steps[(batch, size)]
        print(f"ResNet-50 {batch} x {size}: floats moved outside the convolutions; difference to the pass")
        for form, floats in totals.items():
            diff_mb = (floats - totals["pass"]) * BYTES / 1e6
            ms = [diff_mb / bw for bw in BANDWIDTH_GB_S]  # MB / (GB/s) = ms
            pct = [100 * m / 1e3 / s for m in ms for s in (lo_step, hi_step)]
            print(
                f"  {form:34s} {floats / 1e6:7.1f} M {diff_mb:+8.1f} MB {min(ms):+6.1f} to {max(ms):+6.1f} ms"
                f"  {min(pct):+5.2f} to {max(pct):+5.2f} % of the pass's step"
            )


if __name__ == "__main__":
    main()
