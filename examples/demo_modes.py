"""Show the four ConvBN modes side by side: outputs, gradients and activation memory.

    python examples/demo_modes.py

Builds a small stack of ConvBN+ReLU blocks with ImageNet-like BatchNorm statistics, runs one
forward/backward per mode in float64 and prints how each mode compares with eval mode.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from tllib_tune import ConvBN, set_mode
from tllib_tune.utils.cli import flag_names, to_flags
from tllib_tune.utils.feature_maps import batch_statistics_problem
from tllib_tune.utils.memory import MIB, SavedTensorMeter


def build(depth: int, width: int) -> nn.Module:
    layers = []
    for i in range(depth):
        block = ConvBN(3 if i == 0 else width, width, kernel_size=3, stride=2 if i % 3 == 2 else 1)
        with torch.no_grad():
            block.bn.running_mean.normal_(0, 0.5)
            block.bn.running_var.uniform_(0.2, 4.0)
            block.bn.weight.uniform_(0.3, 1.5)
            block.bn.bias.normal_(0, 0.2)
        layers += [block, nn.ReLU()]
    return nn.Sequential(*layers)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    for flag, value in (("--depth", args.depth), ("--width", args.width), ("--batch-size", args.batch_size),
                        ("--size", args.size)):  # fmt: skip
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    torch.manual_seed(0)
    args.model = build(args.depth, args.width).double()
    # train mode normalises with batch statistics
    sizes = [args.batch_size], [args.size]
    problem = batch_statistics_problem(args.model, *sizes, ["train"], name="the stack", input_arg="size")
    if problem:
        parser.error(to_flags(problem, flag_names(parser)))
    return args


def run_modes(model: nn.Module, x: torch.Tensor) -> dict:
    """Per mode: output, input gradient, parameter gradients and saved-for-backward bytes."""
    results = {}
    for mode in ("eval", "tune", "deploy", "train"):
        set_mode(model, mode)
        model.zero_grad()
        x.grad = None
        with SavedTensorMeter(exclude=[model]) as meter:
            out = model(x)
        out.pow(2).mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[mode] = (out.detach(), x.grad.clone(), grads, meter.bytes)
        set_mode(model, "eval")  # leave deploy: unfolds the weights exactly
    return results


def main() -> None:
    args = parse_args()
    x = torch.randn(args.batch_size, 3, args.size, args.size, dtype=torch.float64, requires_grad=True)
    results = run_modes(args.model, x)
    ref_out, ref_gx, ref_gp, ref_mem = results["eval"]
    print(f"{args.depth} ConvBN+ReLU blocks, input {tuple(x.shape)}, float64; compared with eval mode")
    print(
        f"{'mode':<8}{'max |out diff|':>16}{'max |dx diff|':>16}{'rel param-grad diff':>22}{'act. MiB':>11}"
    )
    for mode, (out, gx, gp, mem) in results.items():
        same_params = gp.numel() == ref_gp.numel() and mode != "deploy"
        grad_diff = f"{((gp - ref_gp).norm() / ref_gp.norm()).item():.2e}" if same_params else "n/a"
        print(
            f"{mode:<8}{(out - ref_out).abs().max().item():>16.2e}{(gx - ref_gx).abs().max().item():>16.2e}"
            f"{grad_diff:>22}{mem / MIB:>11.2f}"
        )
    print(
        "train uses batch statistics, so it differs; deploy trains folded weights (its parameter "
        "gradients are not eval's); tune matches eval to round-off with "
        f"{results['tune'][3] / ref_mem:.0%} of its activation memory."
    )


if __name__ == "__main__":
    main()
