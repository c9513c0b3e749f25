"""Where one mode's iteration time goes compared with another's, op by op (torch.profiler).

    python scripts/profile_modes.py --arch resnet50 --batch-size 8 --input-size 112 --modes tune,deploy

Runs the same fine-tuning iteration as scripts/benchmark_modes.py (same model, head, data and
optimizer) for two modes, interleaved, and profiles every timed iteration. Prints each mode's median
wall time and minor page faults per iteration, then the operators whose self CPU time differs most
between the two modes (milliseconds per iteration, with call counts). The profiler's own overhead
inflates many-op modes a little; use scripts/benchmark_modes.py for the times themselves.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_modes as bench  # noqa: E402  (a sibling script, not a package)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet50", help="any name from tllib_tune.models.list_models()")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--modes", default="tune,deploy", help="two modes, e.g. tune,deploy or tune,eval")
    parser.add_argument("--iterations", type=int, default=8, help="profiled iterations per mode")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled iterations per mode first")
    parser.add_argument("--top", type=int, default=20, help="how many operators to list")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in bench.ALL_MODES]
    if len(modes) != 2 or bad:
        parser.error(f"--modes {args.modes!r}: give two of {', '.join(bench.ALL_MODES)}, comma-separated")
    if min(args.batch_size, args.input_size, args.iterations, args.top) < 1 or args.warmup < 0:
        parser.error("--batch-size, --input-size, --iterations and --top must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads} (leave it out for torch's default)")
    # the benchmark's own checks (architecture, device) and settings (no AMP, contiguous)
    bench_argv = ["--arch", args.arch, "--modes", ",".join(modes), "--device", args.device]
    bench_args = bench.parse_args(bench_argv)
    bench_args.threads = args.threads
    bench_args.batch_sizes, bench_args.input_sizes = [args.batch_size], [args.input_size]
    args.modes, args.bench = modes, bench_args
    return args


def _self_us(event, device_type: str) -> float:
    """An event's own time: on CUDA the GPU's (kernels), on the CPU the host's."""
    if device_type == "cuda":
        device_us = getattr(event, "self_device_time_total", None)
        return device_us if device_us is not None else getattr(event, "self_cuda_time_total", 0.0)
    return event.self_cpu_time_total


def profile_modes(args: argparse.Namespace) -> Dict[str, dict]:
    """Per mode: wall seconds and page faults per iteration, and op -> [self ms, calls] per iteration."""
    runner = bench.Runner(args.bench)
    problem = bench.batch_statistics_problem(runner, args.bench, ("--batch-size", "--input-size"))
    if problem:
        print(f"profile_modes.py: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen).to(runner.device)
    y = torch.randint(0, args.bench.num_classes, (args.batch_size,), generator=gen).to(runner.device)
    for _ in range(args.warmup):
        for mode in args.modes:
            runner.iteration(mode, x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    stats = {
        m: {"wall": [], "faults": [], "ops": collections.defaultdict(lambda: [0.0, 0.0])} for m in args.modes
    }
    for i in range(args.iterations):
        for mode in args.modes if i % 2 == 0 else args.modes[::-1]:
            runner._model_for(mode)  # the mode switch stays outside the profile
            faults = bench.minor_page_faults()
            with profile(activities=activities) as prof:
                stats[mode]["wall"].append(runner.iteration(mode, x, y))
            if faults is not None:
                stats[mode]["faults"].append(bench.minor_page_faults() - faults)
            for event in prof.key_averages():
                entry = stats[mode]["ops"][event.key]
                entry[0] += _self_us(event, runner.device.type) / 1e3 / args.iterations
                entry[1] += event.count / args.iterations
    return stats


def format_report(stats: Dict[str, dict], modes: List[str], top: int, device_type: str = "cpu") -> str:
    """Each mode's time and page faults, then the operators whose self time differs most."""
    a, b = modes
    lines = []
    for m in modes:
        faults = stats[m]["faults"]
        lines.append(
            f"{m:>12}: {statistics.median(stats[m]['wall']) * 1e3:8.1f} ms / iteration (profiled), "
            f"{statistics.median(faults) if faults else '-'} minor page faults / iteration"
        )
    ops_a, ops_b = stats[a]["ops"], stats[b]["ops"]
    keys = sorted(set(ops_a) | set(ops_b), key=lambda k: -abs(ops_a[k][0] - ops_b[k][0]))[:top]
    lines.append("")
    header = f"operator (self {'GPU' if device_type == 'cuda' else 'CPU'} time, ms / iteration)"
    lines.append(f"{header:<58} {a:>9} {b:>9} {'difference':>11} {'calls':>13}")
    for k in keys:
        (ta, na), (tb, nb) = ops_a[k], ops_b[k]
        lines.append(f"{k[:58]:<58} {ta:9.2f} {tb:9.2f} {ta - tb:+11.2f} {f'{na:.0f}/{nb:.0f}':>13}")
    total_a = sum(v[0] for v in ops_a.values())
    total_b = sum(v[0] for v in ops_b.values())
    lines.append(f"{'all operators':<58} {total_a:9.2f} {total_b:9.2f} {total_a - total_b:+11.2f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = profile_modes(args)
    print(
        f"{args.arch}, {args.batch_size} x {args.input_size}, {args.device}, "
        f"threads={torch.get_num_threads()}, {args.iterations} profiled iterations per mode\n"
        f"environment: {bench.timing_environment()}\n"
    )
    print(format_report(stats, args.modes, args.top, torch.device(args.device).type))
    return 0


if __name__ == "__main__":
    sys.exit(main())
