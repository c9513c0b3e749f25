"""Time and memory of one fine-tuning iteration in every ConvBN mode (the paper's Figure 3 / Appendix E).

    python scripts/benchmark_modes.py --arch resnet50 --batch-sizes 8,32 --input-sizes 160,112

One iteration = forward of a zoo backbone plus a linear head, cross-entropy, backward, SGD step. For every
(batch size, input size) the modes are run interleaved, in alternating order repeat after repeat, so
that drift hits them alike; ratios to eval and to deploy come from the same run. Activation memory is
the exact saved-for-backward byte count (parameters excluded); on CUDA the peak allocated memory is
reported too, and everywhere the process's minor page faults per iteration (fresh memory pages the OS
had to map: on the CPU a large share of the time, and set by the C allocator, so the header names its
settings).
Writes results.csv, a TensorBoard run, a PNG plot (with the "plot" extra) and prints the table, then
Tune's ratios against the product's targets.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tllib_tune import ConvBN, set_mode
from tllib_tune.common import atomic_write
from tllib_tune.models import get_model, list_models
from tllib_tune.modules.convbn import MODE_CHOICES
from tllib_tune.utils.feature_maps import smallest_feature_map
from tllib_tune.utils.memory import MIB, SavedTensorMeter

#: What a run measures unless --modes says otherwise.
DEFAULT_MODES = (*MODE_CHOICES, "inplace-abn")
#: keep-folded: Tune as the other implementations compute it (PyTorch's efficient_conv_bn_eval pass, MMCV's
#: ConvModule(efficient_conv_bn_eval=True), the paper's code): the fold built from autograd operations in
#: every call, so the convolution keeps the folded weight for backward. For comparison only.
ALL_MODES = (*DEFAULT_MODES, "keep-folded")
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
]

#: Environment variables that move CPU timings (OpenMP thread waiting, the C allocator); the header
#: names the ones set, so that runs can be compared.
TIMING_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "LD_PRELOAD",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_CONF",
)


@dataclass
class Result:
    mode: str
    batch_size: int
    input_size: int
    times: List[float] = field(default_factory=list)
    activation_bytes: int = 0
    peak_bytes: Optional[int] = None
    page_faults: List[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def minor_page_faults() -> Optional[int]:
    """Minor page faults of this process so far; None where the platform does not count them."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timing_environment() -> str:
    """The TIMING_ENV variables that are set, or a note that the defaults are in use."""
    found = [f"{k}={os.environ[k]}" for k in TIMING_ENV if os.environ.get(k)]
    return ", ".join(found) if found else "default OpenMP and allocator settings"


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _mode_list(text: str) -> List[str]:
    modes = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {bad or text!r}; choose from {', '.join(ALL_MODES)}"
        )
    return modes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet50", help="any name from tllib_tune.models.list_models()")
    parser.add_argument("--batch-sizes", type=_int_list, default=[8], help="comma-separated, e.g. 8,16,32")
    parser.add_argument("--input-sizes", type=_int_list, default=[160], help="comma-separated, e.g. 112,160")
    parser.add_argument(
        "--modes",
        type=_mode_list,
        default=list(DEFAULT_MODES),
        help=f"comma-separated, from {', '.join(ALL_MODES)} (default: all but keep-folded)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per mode (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per mode first")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/latest", help="directory for CSV, plot, TensorBoard")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG even if matplotlib is there")
    args = parser.parse_args(argv)
    if args.arch not in list_models():
        parser.error(f"--arch {args.arch!r} is not a tllib_tune model; see tllib_tune.models.list_models()")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device} asked for, but this machine has no CUDA device; use --device cpu"
        )
    if args.amp == "fp16" and not args.device.startswith("cuda"):
        parser.error("--amp fp16 needs --device cuda; on the CPU use --amp bf16 or none")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads} (leave it out for torch's default)")
    if args.num_classes < 1:
        parser.error(f"--num-classes must be >= 1, got {args.num_classes}")
    return args


class Net(nn.Module):
    """Backbone + global pool + linear head: what a fine-tuning iteration trains."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(backbone.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(x)))


def _realistic_bn_(model: nn.Module, seed: int = 0) -> None:
    """Pretrained-like BN statistics, so deploy's fold and tune's scale are not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=gen))


def keep_folded_forward(block: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """A ConvBN block's eval-mode function computed as the other Tune implementations do: the fold
    s = gamma / sqrt(var + eps), W' = W * s, b' = beta + (b - mean) * s from autograd operations, then
    the convolution, which saves W' (a weight-sized tensor per block) for its backward."""
    conv, bn = block.conv, block.bn
    if not bn.affine:
        raise ValueError("keep-folded compares affine BatchNorm only")
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
    centred_bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    return conv._conv_forward(x, weight, bn.bias + centred_bias * scale)


class Runner:
    """One model (plus an In-Place ABN copy if asked) and its optimizer; runs timed iterations."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        base = Net(get_model(args.arch, pretrained=False), args.num_classes)
        _realistic_bn_(base)
        self.models: Dict[str, nn.Module] = {}
        if any(m in MODE_CHOICES or m == "keep-folded" for m in args.modes):
            self.models["convbn"] = base
        self._blocks = [m for m in base.modules() if isinstance(m, ConvBN)]
        self._keeping_folded = False
        if "inplace-abn" in args.modes:
            from tllib_tune.modules.inplace_abn import convert_to_inplace_abn

            abn = Net(get_model(args.arch, pretrained=False), args.num_classes)
            abn.load_state_dict(base.state_dict())
            convert_to_inplace_abn(abn.backbone)
            self.models["inplace-abn"] = abn
        self.optimizers = {}
        for key, model in self.models.items():
            model.to(self.device).train()
            if args.channels_last:
                model.to(memory_format=torch.channels_last)
            self.optimizers[key] = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()
        self.amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]

    def smallest_feature_map(self, input_size: int) -> int:
        """Values per channel per image in the model's smallest feature map at ``input_size``."""
        return smallest_feature_map(next(iter(self.models.values())), input_size)

    def _model_for(self, mode: str) -> nn.Module:
        if mode == "inplace-abn":
            return self.models["inplace-abn"]
        model = self.models["convbn"]
        keep_folded = mode == "keep-folded"
        if keep_folded != self._keeping_folded:
            for block in self._blocks:
                if keep_folded:  # an instance attribute, found before the class's forward
                    block.forward = functools.partial(keep_folded_forward, block)
                else:
                    del block.forward
            self._keeping_folded = keep_folded
        set_mode(model.backbone, "eval" if keep_folded else mode)
        return model

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def iteration(
        self, mode: str, x: torch.Tensor, y: torch.Tensor, meter: Optional[SavedTensorMeter] = None
    ):
        model = self._model_for(mode)
        optimizer = self.optimizers["inplace-abn" if mode == "inplace-abn" else "convbn"]
        self._sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if meter is not None:
                with meter:
                    logits = model(x)
            else:
                logits = model(x)
            loss = self.loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        self._sync()
        return time.perf_counter() - start

    def measure(self, batch_size: int, input_size: int, progress) -> List[Result]:
        args = self.args
        gen = torch.Generator().manual_seed(batch_size * 1000 + input_size)
        x = torch.randn(batch_size, 3, input_size, input_size, generator=gen).to(self.device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, args.num_classes, (batch_size,), generator=gen).to(self.device)
        results = {m: Result(m, batch_size, input_size) for m in args.modes}
        for mode, result in results.items():
            model = self._model_for(mode)
            meter = SavedTensorMeter(exclude=[model])
            self.iteration(mode, x, y, meter)
            result.activation_bytes = meter.bytes
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
                self.iteration(mode, x, y)
                result.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        for _ in range(args.warmup):
            for mode in args.modes:
                self.iteration(mode, x, y)
                progress.update(1)
        for repeat in range(args.repeats):
            # interleaved, in alternating order (ABC CBA ...): drift and a mode's position after another
            # hit every mode alike
            for mode in args.modes if repeat % 2 == 0 else args.modes[::-1]:
                faults = minor_page_faults()
                results[mode].times.append(self.iteration(mode, x, y))
                if faults is not None:
                    results[mode].page_faults.append(minor_page_faults() - faults)
                progress.update(1)
        return list(results.values())


def _ratio(value: float, ref: Optional[float]) -> Optional[float]:
    return None if not ref else value / ref


def rows_for(results: List[Result], args: argparse.Namespace) -> List[dict]:
    by_mode = {r.mode: r for r in results}
    eval_r, deploy_r = by_mode.get("eval"), by_mode.get("deploy")
    rows = []
    for r in results:
        rows.append(
            {
                "arch": args.arch,
                "device": args.device,
                "amp": args.amp,
                "channels_last": args.channels_last,
                "batch_size": r.batch_size,
                "input_size": r.input_size,
                "mode": r.mode,
                "median_s": r.median,
                "min_s": min(r.times),
                "activation_mb": r.activation_bytes / MIB,
                "peak_mb": None if r.peak_bytes is None else r.peak_bytes / MIB,
                "time_vs_eval": _ratio(r.median, eval_r and eval_r.median),
                "time_vs_deploy": _ratio(r.median, deploy_r and deploy_r.median),
                "memory_vs_eval": _ratio(r.activation_bytes, eval_r and eval_r.activation_bytes),
                "memory_vs_deploy": _ratio(r.activation_bytes, deploy_r and deploy_r.activation_bytes),
                "page_faults": int(statistics.median(r.page_faults)) if r.page_faults else None,
            }
        )
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: List[dict], modes: Sequence[str]) -> str:
    """Appendix E layout: one line per setting, time (s/iter) and memory (MiB) per mode, then ratios."""
    settings = sorted({(r["batch_size"], r["input_size"]) for r in rows})
    head = f"{'batch x size':>13} |" + "".join(f" {m:>19} |" for m in modes)
    sub = f"{'':>13} |" + "".join(f" {'time s':>8} {'act MiB':>10} |" for _ in modes)
    lines = [head, sub, "-" * len(head)]
    for bs, size in settings:
        cells = {r["mode"]: r for r in rows if (r["batch_size"], r["input_size"]) == (bs, size)}
        line = f"{f'{bs} x {size}':>13} |"
        for m in modes:
            r = cells[m]
            line += f" {r['median_s']:>8.4f} {r['activation_mb']:>10.1f} |"
        lines.append(line)
    lines.append("")
    lines.append(
        f"{'batch x size':>13} {'mode':>12} {'time/eval':>10} {'time/deploy':>12} "
        f"{'mem/eval':>9} {'mem/deploy':>11} {'faults/iter':>12}"
    )
    for r in rows:
        setting = f"{r['batch_size']} x {r['input_size']}"
        lines.append(
            f"{setting:>13} {r['mode']:>12} {_fmt(r['time_vs_eval'], '.3f'):>10} "
            f"{_fmt(r['time_vs_deploy'], '.3f'):>12} {_fmt(r['memory_vs_eval'], '.3f'):>9} "
            f"{_fmt(r['memory_vs_deploy'], '.3f'):>11} {_fmt(r['page_faults'], 'd'):>12}"
        )
    return "\n".join(lines)


# The product's headline targets for Tune: (label, ratio column, upper limit).
TARGETS: Tuple[Tuple[str, str, float], ...] = (
    ("memory tune/deploy", "memory_vs_deploy", 1.01),
    ("memory tune/eval", "memory_vs_eval", 0.50),
    ("time tune/eval", "time_vs_eval", 0.95),
    ("time tune/deploy", "time_vs_deploy", 1.03),
)


def format_targets(rows: List[dict]) -> Optional[str]:
    """Tune's ratios against each target, per setting, and whether every setting meets it; None when
    the run lacks tune or the modes a target compares with."""
    tune = {(r["batch_size"], r["input_size"]): r for r in rows if r["mode"] == "tune"}
    settings = sorted(tune)
    if not settings:
        return None
    lines = [f"{'target':>26}" + "".join(f" {f'{b} x {s}':>9}" for b, s in settings) + "  met"]
    for label, column, limit in TARGETS:
        values = [tune[setting][column] for setting in settings]
        if any(v is None for v in values):
            continue
        within = sum(v <= limit for v in values)
        met = "yes" if within == len(values) else f"no, {within} of {len(values)} within"
        lines.append(f"{f'{label} <= {limit:.2f}':>26}" + "".join(f" {v:>9.3f}" for v in values) + f"  {met}")
    return "\n".join(lines) if len(lines) > 1 else None


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


def write_csv(rows: List[dict], path: str) -> None:
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})


def write_tensorboard(rows: List[dict], out: str) -> None:
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


BATCH_STATISTICS_MODES = ("train", "inplace-abn")


def batch_statistics_problem(
    runner: Runner, args: argparse.Namespace, flags: Tuple[str, str] = ("--batch-sizes", "--input-sizes")
) -> Optional[str]:
    """Why a setting cannot run, or None. Train mode and In-Place ABN normalise with the batch's own
    statistics, which need more than one value per channel: a batch of one image whose last feature map
    is 1 x 1 fails in BatchNorm. Checked before anything is timed, so a long run does not die late."""
    modes = [m for m in args.modes if m in BATCH_STATISTICS_MODES]
    if not modes:
        return None
    for input_size in args.input_sizes:
        smallest = runner.smallest_feature_map(input_size)
        for batch_size in args.batch_sizes:
            if batch_size * smallest <= 1:
                return (
                    f"batch {batch_size} x {input_size}: BatchNorm with batch statistics "
                    f"({', '.join(modes)}) "
                    f"needs more than one value per channel, but {args.arch}'s smallest feature map "
                    f"holds {smallest} per image; use {flags[0]} of at least 2, a larger {flags[1]}, or "
                    f"leave {' and '.join(modes)} out of --modes"
                )
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    runner = Runner(args)
    problem = batch_statistics_problem(runner, args)
    if problem:
        print(f"benchmark_modes.py: error: {problem}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print(
            f"benchmark_modes.py: error: --out {args.out}: {exc.strerror}; choose a writable directory",
            file=sys.stderr,
        )
        return 2
    settings = [(b, s) for b in args.batch_sizes for s in args.input_sizes]
    total = len(settings) * (args.warmup + args.repeats) * len(args.modes)
    rows: List[dict] = []
    with tqdm(total=total, desc=f"{args.arch} on {args.device}", unit="iter", file=sys.stderr) as progress:
        for batch_size, input_size in settings:
            rows += rows_for(runner.measure(batch_size, input_size, progress), args)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"\n{args.arch}, {device_name}, amp={args.amp}, channels_last={args.channels_last}, "
        f"threads={torch.get_num_threads()}, median of {args.repeats} after {args.warmup} warm-up\n"
        f"environment: {timing_environment()}"
    )
    print(format_table(rows, args.modes))
    targets = format_targets(rows)
    if targets:
        print("\n" + targets)
    notes = fault_notes(rows)
    if notes:
        print("\n" + notes)
    write_csv(rows, os.path.join(args.out, "results.csv"))
    write_tensorboard(rows, args.out)
    plotted = not args.no_plot and write_plot(rows, args.modes, os.path.join(args.out, "benchmark.png"))
    if not args.no_plot and not plotted:
        print('matplotlib is not installed: no plot (pip install -e ".[plot]")', file=sys.stderr)
    print(f"\nwrote {os.path.join(args.out, 'results.csv')}" + (" and benchmark.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
