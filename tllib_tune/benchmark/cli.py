"""The benchmark's command lines: ``tllib-tune benchmark`` (time and memory of every mode) and
``tllib-tune profile`` (two modes op by op), ``tllib-tune pool`` (several runs' iterations as one);
scripts/benchmark_modes.py, scripts/profile_modes.py and scripts/pool_benchmarks.py are the same programs.

    tllib-tune benchmark --arch resnet50 --batch-sizes 8,32 --input-sizes 160,112
    tllib-tune profile --arch resnet50 --batch-size 8 --input-size 112 --modes tune,deploy
    tllib-tune pool bench/run1 bench/run2 bench/run3 --out bench/pooled
    tllib-tune benchmark --arch resnet50 --batch-sizes 8 --input-sizes 112 \
        --modes eval,tune,deploy,compiled-pass,compiled-eval,compiled-tune,compiled-deploy,eval+ckpt,tune+ckpt

Peers (what users would pick instead): compiled-pass is torchvision's model of the same arch and weights
under torch.compile with PyTorch's Conv-BN pass (efficient_conv_bn_eval_fx_passes); compiled-eval,
compiled-tune, compiled-deploy are ours under torch.compile (each compiled afresh per setting, caches
off; compile time reported apart); eval+ckpt and tune+ckpt checkpoint every backbone stage.

The benchmark writes results.csv, a TensorBoard run and a PNG plot (with the "plot" extra) to --out,
prints the table, then Tune's ratios against the product's targets (the same text in --out/report.txt);
the header names the thread count and the OpenMP/allocator settings in the environment. Its progress
lines go to --out/log.txt as well as to the terminal. A bad command line exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..common import atomic_write
from ..models import check_model
from ..progress import progress_bar, progress_settings
from ..utils.cli import flag_names, print_error, to_flags
from .measure import ALL_MODES, DEFAULT_MODES, BenchmarkSettings, IterationBenchmark, timing_environment
from .peers import COMPILED_MODES, compile_problem, fresh_compile_state
from .pool import format_run_spread, pool_rows, read_rows
from .profile import format_report, profile_modes
from .report import (
    fault_notes,
    format_table,
    rows_for,
    wait_policy_note,
    write_csv,
    write_plot,
    write_tensorboard,
)
from .targets import format_targets

__all__ = ["benchmark_parser", "profile_parser", "pool_parser", "main", "profile_main", "pool_main"]

_BATCH_STATISTICS_FIX = "; or leave train and inplace-abn out of `modes`"


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _setting_list(text: str) -> List[Tuple[int, int]]:
    pairs = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        batch, _, size = item.partition("x")
        if not (batch.strip().isdigit() and size.strip().isdigit()) or min(int(batch), int(size)) < 1:
            raise argparse.ArgumentTypeError(f"expected BATCHxSIZE pairs such as 8x112,16x224, got {item!r}")
        pairs.append((int(batch), int(size)))
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected BATCHxSIZE pairs such as 8x112,16x224, got {text!r}")
    return pairs


def _mode_list(text: str) -> List[str]:
    modes = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {bad or text!r}; choose from {', '.join(ALL_MODES)}"
        )
    return modes


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="resnet50", help="a tllib_tune.models name, or torchvision/<name>, timm/<name>"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--compile-backend",
        choices=("inductor", "aot_eager"),
        default="inductor",
        help="torch.compile backend of the compiled modes (aot_eager: no code generation, for quick checks)",
    )


def _check_common(parser: argparse.ArgumentParser, args: argparse.Namespace, modes: Sequence[str]) -> None:
    try:
        check_model(args.arch)
    except ValueError as exc:
        parser.error(f"--arch: {exc}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device} asked for, but this machine has no CUDA device; use --device cpu"
        )
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads} (leave it out for torch's default)")
    compiled = [m for m in modes if m in COMPILED_MODES]
    problem = compile_problem(args.device) if compiled and args.compile_backend == "inductor" else None
    if problem:
        parser.error(f"--modes {','.join(compiled)}: {problem}; or leave the compiled modes out")


def _compile_state(modes: Sequence[str]) -> Any:
    """For a run with compiled modes, inductor's persistent caches off and a fresh cache directory
    (:func:`.peers.fresh_compile_state`); otherwise a context that does nothing."""
    return fresh_compile_state() if any(m in COMPILED_MODES for m in modes) else contextlib.nullcontext()


def _benchmark_or_exit(parser: argparse.ArgumentParser, settings: BenchmarkSettings) -> IterationBenchmark:
    """The benchmark for ``settings``, or exit 2 with one line where the model cannot run a mode."""
    try:
        return IterationBenchmark(settings)
    except ValueError as exc:  # compiled-pass for an arch torchvision lacks, ckpt without stages
        print_error(parser.prog, to_flags(str(exc), flag_names(parser)))
        raise SystemExit(2) from None


def benchmark_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=_int_list, default=[8], help="comma-separated, e.g. 8,16,32")
    parser.add_argument("--input-sizes", type=_int_list, default=[160], help="comma-separated, e.g. 112,160")
    parser.add_argument(
        "--settings",
        type=_setting_list,
        default=None,
        help="BATCHxSIZE pairs, e.g. 8x112,16x224, instead of every --batch-sizes x --input-sizes",
    )
    parser.add_argument(
        "--modes",
        type=_mode_list,
        default=list(DEFAULT_MODES),
        help=f"comma-separated, from {', '.join(ALL_MODES)} (default: all but keep-folded)",
    )
    _common_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per mode first")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/latest", help="directory for CSV, plot, TensorBoard")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG even if matplotlib is there")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> argparse.Namespace:
    """The benchmark's command line, checked (exit 2 with one line on a bad value)."""
    parser = benchmark_parser(prog)
    args = parser.parse_args(argv)
    _check_common(parser, args, args.modes)
    if args.amp == "fp16" and not args.device.startswith("cuda"):
        parser.error("--amp fp16 needs --device cuda; on the CPU use --amp bf16 or none")
    if args.settings:
        args.batch_sizes = sorted({b for b, _ in args.settings})
        args.input_sizes = sorted({s for _, s in args.settings})
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    return args


def settings_from(args: argparse.Namespace) -> BenchmarkSettings:
    """The measured settings of a parsed benchmark command line."""
    names = ("arch", "modes", "device", "amp", "channels_last", "num_classes", "repeats", "warmup",
             "compile_backend")  # fmt: skip
    return BenchmarkSettings(**{name: getattr(args, name) for name in names})


def _report(rows: List[dict], args: argparse.Namespace) -> None:
    """Print the run's table and notes, and write them (report.txt) and its rows (CSV, TensorBoard,
    plot) to ``args.out``."""
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    parts = [
        f"{args.arch}, {device_name}, amp={args.amp}, channels_last={args.channels_last}, "
        f"threads={torch.get_num_threads()}, median of {args.repeats} after {args.warmup} warm-up\n"
        f"environment: {timing_environment()}\n{format_table(rows, args.modes)}"
    ]
    parts += [extra for extra in (format_targets(rows), fault_notes(rows), wait_policy_note(rows)) if extra]
    text = "\n\n".join(parts)
    print("\n" + text)
    with atomic_write(os.path.join(args.out, "report.txt"), "w") as f:
        f.write(text + "\n")
    write_csv(rows, os.path.join(args.out, "results.csv"))
    write_tensorboard(rows, args.out)
    plotted = not args.no_plot and write_plot(rows, args.modes, os.path.join(args.out, "benchmark.png"))
    if not args.no_plot and not plotted:
        print('matplotlib is not installed: no plot (pip install -e ".[plot]")', file=sys.stderr)
    print(
        f"\nwrote {os.path.join(args.out, 'results.csv')}, report.txt"
        + (", benchmark.png" if plotted else "")
    )


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the benchmark command line; returns the exit status."""
    parser = benchmark_parser(prog)
    args = parse_args(argv, prog)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _benchmark_or_exit(parser, settings_from(args))
    problem = bench.batch_statistics_problem(
        args.batch_sizes, args.input_sizes, batch_arg="batch_sizes", input_arg="input_sizes"
    )
    if problem:
        print_error(parser.prog, to_flags(problem + _BATCH_STATISTICS_FIX, flag_names(parser)))
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print_error(parser.prog, f"--out {args.out}: {exc.strerror}; choose a writable directory")
        return 2
    settings = args.settings or [(b, s) for b in args.batch_sizes for s in args.input_sizes]
    compiled = sum(m in COMPILED_MODES for m in args.modes)
    total = len(settings) * ((args.warmup + args.repeats) * len(args.modes) + compiled)
    rows: List[dict] = []
    with (
        open(os.path.join(args.out, "log.txt"), "a", encoding="utf-8", buffering=1) as log,
        progress_settings(sink=lambda line: log.write(line + "\n")),
        _compile_state(args.modes),
        progress_bar(total=total, desc=f"{args.arch} on {args.device}", unit="iter") as progress,
    ):
        for batch_size, input_size in settings:
            rows += rows_for(bench.measure(batch_size, input_size, progress), bench.settings)
    _report(rows, args)
    return 0


def profile_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The profiler's flags."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--modes", default="tune,deploy", help="two modes, e.g. tune,deploy or tune,eval")
    parser.add_argument("--iterations", type=int, default=8, help="profiled iterations per mode")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled iterations per mode first")
    parser.add_argument("--top", type=int, default=20, help="how many operators to list")
    _common_arguments(parser)
    return parser


def parse_profile_args(
    argv: Optional[Sequence[str]] = None, prog: Optional[str] = None
) -> argparse.Namespace:
    """The profiler's command line, checked (exit 2 with one line on a bad value)."""
    parser = profile_parser(prog)
    args = parser.parse_args(argv)
    modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    if len(modes) != 2 or any(m not in ALL_MODES for m in modes):
        parser.error(f"--modes {args.modes!r}: give two of {', '.join(ALL_MODES)}, comma-separated")
    if min(args.batch_size, args.input_size, args.iterations, args.top) < 1 or args.warmup < 0:
        parser.error("--batch-size, --input-size, --iterations and --top must be >= 1, --warmup >= 0")
    _check_common(parser, args, modes)
    args.modes = modes
    return args


def profile_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the profiler command line; returns the exit status."""
    parser = profile_parser(prog)
    args = parse_profile_args(argv, prog)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        arch=args.arch, modes=args.modes, device=args.device, compile_backend=args.compile_backend
    )
    bench = _benchmark_or_exit(parser, settings)
    problem = bench.batch_statistics_problem([args.batch_size], [args.input_size])
    if problem:
        print_error(parser.prog, to_flags(problem + _BATCH_STATISTICS_FIX, flag_names(parser)))
        return 2
    with _compile_state(args.modes):
        stats = profile_modes(
            bench, args.modes, batch_size=args.batch_size, input_size=args.input_size,
            iterations=args.iterations, warmup=args.warmup,
        )  # fmt: skip
    print(
        f"{args.arch}, {args.batch_size} x {args.input_size}, {args.device}, "
        f"threads={torch.get_num_threads()}, {args.iterations} profiled iterations per mode\n"
        f"environment: {timing_environment()}\n"
    )
    print(format_report(stats, args.modes, args.top, torch.device(args.device).type))
    return 0


def pool_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The pooling command's arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pool the timed iterations of several benchmark runs of one code and machine: the "
        "table and targets of all iterations together (a narrower interval), and each target's lowest "
        "and highest ratio over the runs (their spread).",
    )
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", help="a folder --out of a benchmark, or its results.csv"
    )
    parser.add_argument("--out", help="also write the pooled rows to OUT/results.csv")
    return parser


def pool_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the pooling command line; returns the exit status (2: a run that cannot be read or pooled)."""
    parser = pool_parser(prog)
    args = parser.parse_args(argv)
    if not args.runs:
        parser.error(
            "give at least one RUN: a folder that tllib-tune benchmark --out wrote, or its results.csv"
        )
    try:
        runs = [read_rows(path) for path in args.runs]
        rows, left_out = pool_rows(runs, args.runs)
    except (OSError, ValueError) as exc:
        print_error(parser.prog, f"{exc}")
        return 2
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    first, plural = rows[0], "s" if len(runs) > 1 else ""
    counts = "/".join(str(n) for n in sorted({len(r["times"]) for r in rows}))
    print(f"{len(runs)} run{plural} pooled: {', '.join(args.runs)}")
    print(
        f"{first['arch']}, {first['device']}, amp={first['amp']}, channels_last={first['channels_last']}, "
        f"median of {counts} iterations a mode"
    )
    if left_out:
        print(f"left out (not in every run): {', '.join(left_out)}")
    print(format_table(rows, modes))
    for title, extra in (("pooled", format_targets(rows)), ("each run", format_run_spread(runs, rows))):
        if extra:
            print(f"\n{title}:\n{extra}")
    note = wait_policy_note(rows)
    if note:
        print("\n" + note)
    if args.out:
        try:
            write_csv(rows, os.path.join(args.out, "results.csv"))
        except OSError as exc:
            print_error(parser.prog, f"--out {args.out}: {exc.strerror}; choose a writable directory")
            return 2
        print(f"\nwrote {os.path.join(args.out, 'results.csv')}")
    return 0
