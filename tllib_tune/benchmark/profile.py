"""Where one mode's iteration time goes compared with another's, op by op (torch.profiler).

Runs the benchmark's fine-tuning iteration (same model, head, data and optimizer) for two modes,
interleaved in the benchmark's order (a compiled mode is compiled first, outside the profile), and
profiles every timed iteration: each mode's median wall time and minor page faults per iteration, and the
self time and calls of every operator. The profiler's own overhead inflates many-op modes a little; the
benchmark gives the times themselves.
"""

from __future__ import annotations

import collections
import statistics
from typing import Dict, List, Sequence

from torch.profiler import ProfilerActivity, profile

from .measure import IterationBenchmark, minor_page_faults, timing_order

__all__ = ["profile_modes", "format_report"]


def _self_us(event, device_type: str) -> float:
    """An event's own time: on CUDA the GPU's (kernels), on the CPU the host's."""
    if device_type == "cuda":
        device_us = getattr(event, "self_device_time_total", None)
        return device_us if device_us is not None else getattr(event, "self_cuda_time_total", 0.0)
    return event.self_cpu_time_total


def profile_modes(
    bench: IterationBenchmark,
    modes: Sequence[str],
    *,
    batch_size: int,
    input_size: int,
    iterations: int = 8,
    warmup: int = 2,
) -> Dict[str, dict]:
    """Per mode: wall seconds and page faults per iteration ("wall", "faults"), "ops": operator ->
    [self ms, calls] per iteration, and for a compiled mode "compile_s", its first iteration (compiling
    included), which is not profiled."""
    x, y = bench.batch(batch_size, input_size, seed=0)
    first = bench.compile(modes, x, y)
    for _ in range(warmup):
        for mode in modes:
            bench.iteration(mode, x, y)
    device_type = bench.device.type
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    stats = {m: {"wall": [], "faults": [], "ops": collections.defaultdict(lambda: [0.0, 0.0])} for m in modes}
    for mode in timing_order(modes, iterations):
        bench.model_for(mode)  # the mode switch stays outside the profile
        faults = minor_page_faults()
        with profile(activities=activities) as prof:
            stats[mode]["wall"].append(bench.iteration(mode, x, y))
        if faults is not None:
            stats[mode]["faults"].append(minor_page_faults() - faults)
        for event in prof.key_averages():
            entry = stats[mode]["ops"][event.key]
            entry[0] += _self_us(event, device_type) / 1e3 / iterations
            entry[1] += event.count / iterations
    for mode, seconds in first.items():
        stats[mode]["compile_s"] = seconds
    return stats


def format_report(stats: Dict[str, dict], modes: List[str], top: int, device_type: str = "cpu") -> str:
    """Each mode's time and page faults, then the ``top`` operators whose self time differs most."""
    a, b = modes
    lines = []
    width = max(12, *map(len, modes))
    for m in modes:
        faults = stats[m]["faults"]
        lines.append(
            f"{m:>{width}}: {statistics.median(stats[m]['wall']) * 1e3:8.1f} ms / iteration (profiled), "
            f"{statistics.median(faults) if faults else '-'} minor page faults / iteration"
            + (
                f", compiled in a first iteration of {stats[m]['compile_s']:.1f} s"
                if "compile_s" in stats[m]
                else ""
            )
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
