"""The benchmark's report: one row per (setting, mode) with ratios to eval and deploy, the printed
table (the paper's Appendix E layout), page-fault notes, and the files: results.csv, a TensorBoard run, a
PNG plot (with the "plot" extra). The targets under the table: :mod:`.targets`."""

from __future__ import annotations

import csv
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..common import atomic_write
from ..utils.memory import MIB
from .measure import BenchmarkSettings, Result, timing_environment
from .peers import PEER_MODES

__all__ = [
    "COLUMNS",
    "RETAIN_MEMORY",
    "RATIOS",
    "rows_for",
    "add_ratios",
    "by_setting_and_mode",
    "format_table",
    "fault_notes",
    "wait_policy_note",
    "write_csv",
    "write_tensorboard",
    "write_plot",
]

COLUMNS = [
    "arch",
    "device",
    "amp",
    "channels_last",
    "batch_size",
    "input_size",
    "mode",
    "median_s",
    "min_s",
    "activation_mb",
    "peak_mb",
    "time_vs_eval",
    "time_vs_deploy",
    "memory_vs_eval",
    "memory_vs_deploy",
    "page_faults",
    "peak_saved_mb",
    "compile_s",
    "time_vs_tune",
    "note",
    "times_s",
    "threads",
    "environment",
]


def _ratio(value: float, ref: Optional[float]) -> Optional[float]:
    return None if not ref else value / ref


def rows_for(results: List[Result], settings: BenchmarkSettings) -> List[dict]:
    """One row per result of a setting, with its ratios to the eval and deploy results of that setting,
    the thread count and the timing variables of the environment (what pooled runs must share)."""
    threads, environment = torch.get_num_threads(), timing_environment()
    rows = [
        {
            "arch": settings.arch,
            "device": settings.device,
            "amp": settings.amp,
            "channels_last": settings.channels_last,
            "batch_size": r.batch_size,
            "input_size": r.input_size,
            "mode": r.mode,
            "median_s": r.median,
            "min_s": min(r.times),
            "activation_mb": r.activation_bytes / MIB,
            "peak_mb": None if r.peak_bytes is None else r.peak_bytes / MIB,
            "page_faults": int(statistics.median(r.page_faults)) if r.page_faults else None,
            "peak_saved_mb": None if r.peak_saved_bytes is None else r.peak_saved_bytes / MIB,
            "compile_s": None if r.first_s is None else max(r.first_s - r.median, 0.0),
            "note": r.note or None,
            "times": list(r.times),  # every timed iteration, in run order (CSV: times_s)
            "threads": threads,
            "environment": environment,
        }
        for r in results
    ]
    return add_ratios(rows)


#: The ratio columns of a row: (column, the row's value it divides, the mode of the same setting it
#: divides by).
RATIOS: Tuple[Tuple[str, str, str], ...] = (
    ("time_vs_eval", "median_s", "eval"),
    ("time_vs_deploy", "median_s", "deploy"),
    ("time_vs_tune", "median_s", "tune"),
    ("memory_vs_eval", "activation_mb", "eval"),
    ("memory_vs_deploy", "activation_mb", "deploy"),
)


def add_ratios(rows: List[dict]) -> List[dict]:
    """``rows`` with each :data:`RATIOS` column set (None where its setting lacks the mode); in place."""
    cell = by_setting_and_mode(rows)
    for row in rows:
        for column, value, mode in RATIOS:
            ref = cell.get((row["batch_size"], row["input_size"], mode))
            row[column] = _ratio(row[value], ref and ref[value])
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: List[dict], modes: Sequence[str]) -> str:
    """Appendix E layout: one line per setting, time (s/iter) and memory (MiB) per mode, then ratios."""
    settings = sorted({(r["batch_size"], r["input_size"]) for r in rows})
    wide = [m for m in modes if m not in PEER_MODES]  # the peers are in the long table below
    head = f"{'batch x size':>13} |" + "".join(f" {m:>19} |" for m in wide)
    sub = f"{'':>13} |" + "".join(f" {'time s':>8} {'act MiB':>10} |" for _ in wide)
    lines = [head, sub, "-" * len(head)]
    for bs, size in settings:
        cells = {r["mode"]: r for r in rows if (r["batch_size"], r["input_size"]) == (bs, size)}
        line = f"{f'{bs} x {size}':>13} |"
        for m in wide:
            r = cells[m]
            line += f" {r['median_s']:>8.4f} {r['activation_mb']:>10.1f} |"
        lines.append(line)
    lines.append("")
    lines.append(
        f"{'batch x size':>13} {'mode':>15} {'time s':>8} {'time/eval':>10} {'time/deploy':>12} "
        f"{'time/tune':>10} {'act MiB':>9} {'mem/eval':>9} {'mem/deploy':>11} {'peak MiB':>9} "
        f"{'compile s':>10} {'faults/iter':>12}"
    )
    for r in rows:
        setting = f"{r['batch_size']} x {r['input_size']}"
        lines.append(
            f"{setting:>13} {r['mode']:>15} {r['median_s']:>8.4f} {_fmt(r['time_vs_eval'], '.3f'):>10} "
            f"{_fmt(r['time_vs_deploy'], '.3f'):>12} {_fmt(r['time_vs_tune'], '.3f'):>10} "
            f"{r['activation_mb']:>9.1f} {_fmt(r['memory_vs_eval'], '.3f'):>9} "
            f"{_fmt(r['memory_vs_deploy'], '.3f'):>11} {_fmt(r['peak_saved_mb'], '.1f'):>9} "
            f"{_fmt(r['compile_s'], '.1f'):>10} {_fmt(r['page_faults'], 'd'):>12}"
        )
    notes = sorted({f"{r['mode']}: {r['note']}" for r in rows if r.get("note")})
    if notes:
        lines += [""] + [f"note: {n}" for n in notes]
    lines += [
        "",
        "act MiB: saved for backward by the forward; peak MiB: the step's largest live total of saved "
        "tensors, recomputation included; compile s: first iteration minus the median",
    ]
    return "\n".join(lines)


def by_setting_and_mode(rows: List[dict]) -> Dict[Tuple[int, int, str], dict]:
    """The rows by (batch size, input size, mode)."""
    return {(r["batch_size"], r["input_size"], r["mode"]): r for r in rows}


#: glibc settings under which freed memory stays mapped, so that no mode pays for page faults.
RETAIN_MEMORY = (
    "MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824"
)


def fault_notes(rows: List[dict], tolerance: float = 1.25, floor: int = 10_000) -> Optional[str]:
    """A warning for each setting where Tune and Deploy, which keep the same activations, took page
    faults more than ``tolerance`` times apart (and at least ``floor`` apart): the allocator's state,
    not the mode, moved their time ratio there. None when every setting is consistent."""
    by_setting: Dict[Tuple[int, int], Dict[str, dict]] = {}
    for r in rows:
        by_setting.setdefault((r["batch_size"], r["input_size"]), {})[r["mode"]] = r
    notes = []
    for (batch, size), modes in sorted(by_setting.items()):
        tune, deploy = modes.get("tune"), modes.get("deploy")
        if tune is None or deploy is None or tune["page_faults"] is None or deploy["page_faults"] is None:
            continue
        if abs(tune["activation_mb"] - deploy["activation_mb"]) > 0.01 * deploy["activation_mb"]:
            continue  # they allocate differently (autocast keeps low-precision weight copies in deploy)
        low, high = sorted((tune["page_faults"], deploy["page_faults"]))
        if high - low >= floor and high > tolerance * low:
            notes.append(
                f"note: at {batch} x {size} tune and deploy keep the same activations but took "
                f"{tune['page_faults']} and {deploy['page_faults']} minor page faults per iteration, so "
                "their time ratio there reflects the allocator's state as much as the modes"
            )
    if not notes:
        return None
    notes.append(
        f"for compute-only ratios rerun with {RETAIN_MEMORY} in the environment (glibc), or with "
        "jemalloc or tcmalloc through LD_PRELOAD"
    )
    return "\n".join(notes)


def wait_policy_note(rows: List[dict]) -> Optional[str]:
    """A note where CPU rows with Tune were timed under ``OMP_WAIT_POLICY=PASSIVE`` on several threads:
    every parallel region then waits for a sleeping thread to wake, and Tune's extra small operations
    pay that more often than Deploy or Eval, so its time ratios read higher than under OpenMP's default
    policy (measured in docs/benchmarks.md, "OpenMP's wait policy"). None otherwise."""
    timed_passive = any(
        str(r.get("device", "")).startswith("cpu")
        and (r.get("threads") or 1) > 1
        and "omp_wait_policy=passive" in str(r.get("environment") or "").lower()
        and r.get("mode") in ("tune", "compiled-tune")
        for r in rows
    )
    if not timed_passive:
        return None
    return (
        "note: OMP_WAIT_POLICY=PASSIVE puts every parallel region behind a sleeping thread's wake-up (tens "
        "of microseconds on a CPU), which tune's extra small operations pay more often than the other "
        "modes: its time ratios read higher than under OpenMP's default policy (docs/benchmarks.md, "
        '"OpenMP\'s wait policy")'
    )


def write_csv(rows: List[dict], path: str) -> None:
    """results.csv, one line per row (COLUMNS), written atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            line = {k: ("" if row[k] is None else row[k]) for k in COLUMNS if k != "times_s"}
            line["times_s"] = " ".join(f"{t:.4f}" for t in row["times"])
            writer.writerow(line)


def write_tensorboard(rows: List[dict], out: str) -> None:
    """Time, activation and peak memory against batch size, per mode and input size, in <out>/tb."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(out, "tb"))
    for r in rows:
        tag = f"{r['mode']}/size{r['input_size']}"
        writer.add_scalar(f"time_s/{tag}", r["median_s"], r["batch_size"])
        writer.add_scalar(f"activations_mb/{tag}", r["activation_mb"], r["batch_size"])
        if r["peak_mb"] is not None:
            writer.add_scalar(f"peak_mb/{tag}", r["peak_mb"], r["batch_size"])
    writer.close()


def write_plot(rows: List[dict], modes: Sequence[str], path: str) -> bool:
    """Memory and time against batch size and against input size; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    batch_sizes = sorted({r["batch_size"] for r in rows})
    input_sizes = sorted({r["input_size"] for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (x_key, fixed_key, fixed_value) in enumerate(
        [("batch_size", "input_size", input_sizes[-1]), ("input_size", "batch_size", batch_sizes[-1])]
    ):
        for row_i, (y_key, label) in enumerate(
            [("activation_mb", "activation memory (MiB)"), ("median_s", "s / iter")]
        ):
            ax = axes[row_i][col]
            for m in modes:
                pts = sorted(
                    (r[x_key], r[y_key]) for r in rows if r["mode"] == m and r[fixed_key] == fixed_value
                )
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
            ax.set_xlabel(x_key.replace("_", " "))
            ax.set_ylabel(label)
            ax.set_title(f"{fixed_key.replace('_', ' ')} = {fixed_value}")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{rows[0]['arch']} on {rows[0]['device']}: one fine-tuning iteration per mode")
    fig.tight_layout()
    with atomic_write(path, "wb", suffix=".png") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return True
