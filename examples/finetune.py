"""Fine-tune an ImageNet backbone on a fine-grained data set, TLlib-style, with a --mode switch.

    python examples/finetune.py --quick-start                          # offline, ~1.5 min on 2 CPU cores
    python examples/finetune.py -d cub200 -a resnet50 --mode tune      # the main job (data under data/cub200)
    python examples/finetune.py -d cub200 -a resnet50 --mode train     # TLlib's baseline, for comparison
    torchrun --nproc_per_node 2 -- examples/finetune.py -d cub200 ...   # DistributedDataParallel

(With torchrun, the `--` keeps torchrun from reading our --log as an abbreviation of its --log-dir.)

The flags follow TLlib's task_adaptation/image_classification/erm.py where they overlap. --mode chooses
how the backbone's ConvBN blocks compute (train: BatchNorm with batch statistics, TLlib's default;
eval: frozen statistics; tune: eval's function with deploy's memory; deploy: folded weights;
inplace-abn: the In-Place ABN baseline). The classifier head (bottleneck + linear) is new and always
trains normally. Everything a run produces lands in --log: TensorBoard events (tb/), metrics.jsonl,
summary.json and checkpoints/{latest,best}.pt. Ctrl-C (or SIGTERM) saves latest.pt and exits; add
--resume <log>/checkpoints/latest.pt to the same command to carry on exactly where it stopped.

Exit status: 0 done, 1 a user error (the message says what and how to fix it), 2 bad command line,
3 the loss became non-finite, 128+N stopped by signal N after saving latest.pt.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script from a source checkout: make tllib_tune importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from tllib_tune import set_mode  # noqa: E402
from tllib_tune.engine import (  # noqa: E402
    DataLoadingError,
    NonFiniteLossError,
    build_optimizer,
    convert_sync_batchnorm,
    train_one_epoch,
    validate,
)
from tllib_tune.modules.inplace_abn import convert_to_inplace_abn  # noqa: E402
from tllib_tune.utils.checkpoint import (  # noqa: E402
    CheckpointError,
    block_modes,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from tllib_tune.utils.data import EpochBatchSampler, SeededDataset, ShardSampler  # noqa: E402
from tllib_tune.utils.feature_maps import smallest_feature_map  # noqa: E402
from tllib_tune.utils.logger import RunLogger, read_jsonl  # noqa: E402

PROG = "finetune.py"
MODES = ("train", "eval", "tune", "deploy", "inplace-abn")
SCHEDULE_MODES = ("train", "eval", "tune", "deploy")
SAMPLE_RATES = (100, 50, 30, 15)
EXIT_USER_ERROR, EXIT_USAGE, EXIT_DIVERGED = 1, 2, 3
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# The offline quick start: explicit flags on the command line still override these.
QUICK_START = {
    "dataset": "synthetic",
    "root": os.path.join("data", "synthetic-quickstart"),
    "arch": "resnet18",
    "pretrained": "none",
    "input_size": 64,
    "batch_size": 32,
    "epochs": 5,
    "iters_per_epoch": 80,
    "lr": 0.02,
    "lr_decay_epochs": [4],
    "mode_schedule": "train:0-4,tune:4-5",
    "workers": 1,
}
# From scratch, 20 training images per class overfit within a minute; the quick start generates 50.
QUICK_START_DATA = {"images_per_class": 100}


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some messages carry a hint on a second line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class UserError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""

    exit_code = EXIT_USER_ERROR


class Diverged(Exception):
    exit_code = EXIT_DIVERGED


class Stopped(Exception):
    """A signal asked the run to stop; latest.pt has been written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = p.add_argument_group("data")
    from tllib_tune.datasets import ALIASES, list_datasets

    data.add_argument(
        "-d",
        "--dataset",
        default="cub200",
        choices=list_datasets() + sorted(ALIASES),
        help="data set (default: cub200)",
    )
    data.add_argument("--root", default=None, help="data set root (default: data/<dataset>)")
    data.add_argument(
        "-sr",
        "--sample-rate",
        type=int,
        default=100,
        choices=SAMPLE_RATES,
        help="percent of the training set per class, TLlib's protocol (default: 100)",
    )
    data.add_argument(
        "--input-size",
        type=int,
        default=224,
        help="crop size in pixels: 224 (TLlib), 448 (the paper), or a small size such as 64 for quick runs",
    )
    data.add_argument(
        "--val-ratio",
        type=float,
        default=0.0,
        help="hold out this fraction of train for validation and model selection (best.pt); default 0: "
        "no selection, the final epoch's test accuracy is reported",
    )
    data.add_argument("-j", "--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")

    model = p.add_argument_group("model")
    model.add_argument(
        "-a", "--arch", default="resnet50", help="backbone, any tllib_tune model (default: resnet50)"
    )
    model.add_argument(
        "--pretrained",
        default="imagenet",
        help='"imagenet" (default: torchvision ImageNet weights, downloaded once), "none" (random '
        "initialisation) or a checkpoint file",
    )
    model.add_argument(
        "--mode",
        default="tune",
        choices=MODES,
        help="how the backbone's ConvBN blocks compute (default: tune)",
    )
    model.add_argument(
        "--mode-schedule",
        default=None,
        metavar="SCHEDULE",
        help='modes by epoch, e.g. "train:0-12,tune:12-20" (the paper\'s Appendix I); overrides --mode; '
        '"none": no schedule',
    )

    opt = p.add_argument_group("optimisation (TLlib's erm.py)")
    opt.add_argument(
        "-b", "--batch-size", type=int, default=48, help="images per step and process (default: 48)"
    )
    opt.add_argument(
        "--lr", type=float, default=0.01, help="learning rate of the head; backbone 0.1x (default: 0.01)"
    )
    opt.add_argument("--lr-gamma", type=float, default=0.1, help="MultiStepLR factor (default: 0.1)")
    opt.add_argument(
        "--lr-decay-epochs", type=int, nargs="+", default=[12], help="MultiStepLR milestones (default: 12)"
    )
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, Nesterov (default: 0.9)")
    opt.add_argument(
        "--wd", "--weight-decay", dest="wd", type=float, default=5e-4, help="weight decay (default: 5e-4)"
    )
    opt.add_argument("--epochs", type=int, default=20, help="number of epochs (default: 20)")
    opt.add_argument("-i", "--iters-per-epoch", type=int, default=500, help="steps per epoch (default: 500)")
    opt.add_argument("--seed", type=int, default=0, help="random seed: data order, augmentation, head init")

    run = p.add_argument_group("run")
    run.add_argument(
        "--amp", default="none", choices=("none", "fp16", "bf16"), help="mixed precision (fp16: CUDA)"
    )
    run.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    run.add_argument(
        "--device", default="auto", help='"auto" (default: cuda if available), "cpu", "cuda", "cuda:1"'
    )
    run.add_argument(
        "--sync-bn", action="store_true", help="SyncBatchNorm across processes (train mode, CUDA)"
    )
    run.add_argument(
        "--log",
        default=None,
        help="run directory (default: runs/<dataset>_<arch>_<mode>_<time>, or the --resume checkpoint's run)",
    )
    run.add_argument(
        "--resume", default=None, metavar="CHECKPOINT", help="carry on from <log>/checkpoints/latest.pt"
    )
    run.add_argument(
        "--phase",
        default="train",
        choices=("train", "test"),
        help="train (default), or test: evaluate a checkpoint (--resume, else <log>/checkpoints/best.pt or "
        "latest.pt) on the test split",
    )
    run.add_argument(
        "--quick-start",
        action="store_true",
        help="offline demo: synthetic data, random init, resnet18 at 64 px, a few minutes on a CPU "
        f"(sets {', '.join(f'--{k.replace(chr(95), chr(45))}' for k in QUICK_START)} unless given)",
    )
    return p


def parse_mode_schedule(text: str, epochs: int) -> List[Tuple[str, int, int]]:
    """Parse "train:0-12,tune:12-20" into [(mode, first_epoch, end_epoch)], checking coverage."""
    example = 'e.g. --mode-schedule "train:0-12,tune:12-20"'
    segments = []
    for part in text.split(","):
        part = part.strip()
        mode, sep, span = part.partition(":")
        start, dash, end = span.partition("-")
        mode = mode.strip().lower()
        if not sep or not dash or not start.strip().isdigit() or not end.strip().isdigit():
            raise ValueError(f"segment {part!r} is not MODE:START-END ({example})")
        if mode not in SCHEDULE_MODES:
            extra = (
                " (inplace-abn replaces the blocks, so it can only be used as --mode)"
                if mode == "inplace-abn"
                else ""
            )
            raise ValueError(
                f"segment {part!r}: unknown mode {mode!r}; choose from {', '.join(SCHEDULE_MODES)}{extra}"
            )
        first, last = int(start), int(end)
        if last <= first:
            raise ValueError(f"segment {part!r}: the end epoch must be larger than the start ({example})")
        segments.append((mode, first, last))
    segments.sort(key=lambda s: s[1])
    expected = 0
    for mode, first, last in segments:
        if first != expected:
            what = (
                "overlaps the previous segment"
                if first < expected
                else f"leaves epochs {expected}-{first} without a mode"
            )
            raise ValueError(
                f"segment {mode}:{first}-{last} {what}; segments must run on from epoch 0 without gaps"
            )
        expected = last
    if expected < epochs:
        raise ValueError(
            f"it covers epochs 0-{expected} but the run has --epochs {epochs}; extend the last segment"
        )
    return segments


def mode_for_epoch(schedule: Sequence[Tuple[str, int, int]], epoch: int) -> str:
    for mode, first, last in schedule:
        if first <= epoch < last:
            return mode
    return schedule[-1][0]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick_start:
        defaults = dict(QUICK_START)
        given = sys.argv[1:] if argv is None else list(argv)
        if args.mode_schedule is None and any(a == "--mode" or a.startswith("--mode=") for a in given):
            defaults["mode_schedule"] = None  # an explicit --mode replaces the quick start's schedule
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.mode_schedule is not None and args.mode_schedule.strip().lower() in ("", "none"):
        args.mode_schedule = None
    checks = [
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.iters_per_epoch >= 1, f"--iters-per-epoch must be >= 1, got {args.iters_per_epoch}"),
        (args.workers >= 0, f"--workers must be >= 0, got {args.workers}"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr must be a positive number, got {args.lr}"),
        (0.0 <= args.val_ratio < 1.0, f"--val-ratio must be in [0, 1), got {args.val_ratio}"),
        (
            args.input_size >= 16,
            f"--input-size must be >= 16 pixels (224 or 448 for real runs), got {args.input_size}",
        ),
        (
            all(e >= 0 for e in args.lr_decay_epochs),
            f"--lr-decay-epochs must be >= 0, got {args.lr_decay_epochs}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    if args.mode_schedule is not None:
        try:
            args.schedule = parse_mode_schedule(args.mode_schedule, args.epochs)
        except ValueError as exc:
            parser.error(f"argument --mode-schedule: {args.mode_schedule!r}: {exc}")
    else:
        args.schedule = [(args.mode, 0, args.epochs)]
    from tllib_tune.models import list_models

    names = list(list_models())
    if args.arch not in names:
        close = difflib.get_close_matches(args.arch, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        parser.error(f"argument -a/--arch: unknown model {args.arch!r}; {hint}available: {', '.join(names)}")
    args.dataset_options = dict(QUICK_START_DATA) if args.quick_start and args.dataset == "synthetic" else {}
    if args.root is None:
        args.root = os.path.join("data", args.dataset)
    return args


# ----------------------------------------------------------------------------------------------------------
# Set-up: processes, device, data, model
# ----------------------------------------------------------------------------------------------------------
class Env:
    """Process layout under torchrun (or a single process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.distributed = self.world > 1

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def setup_device(args: argparse.Namespace, env: Env) -> torch.device:
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {args.device} asks for CUDA, but no CUDA device is available; use --device cpu"
            )
        if env.distributed:
            device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    elif device.type != "cpu":
        raise UserError(f"--device {args.device!r} is not supported; use auto, cpu or cuda[:N]")
    if args.amp == "fp16" and device.type != "cuda":
        raise UserError(
            "--amp fp16 needs a CUDA device (it uses a gradient scaler); use --amp bf16 on the CPU"
        )
    if args.sync_bn and device.type != "cuda" and env.distributed:
        raise UserError(
            "--sync-bn needs CUDA devices (SyncBatchNorm does not run on the CPU); drop --sync-bn"
        )
    if env.distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def build_transforms(args: argparse.Namespace) -> Tuple[Any, Any]:
    """TLlib's transforms at --input-size: RandomResizedCrop + flip (train), Resize + CenterCrop (test)."""
    from tllib_tune.datasets import get_test_transform, get_train_transform

    return get_train_transform(args.input_size, scale=crop_scale(args)), get_test_transform(args.input_size)


def crop_scale(args: argparse.Namespace) -> Tuple[float, float]:
    """RandomResizedCrop's area range: TLlib's 0.2-1, or 0.5-1 on the synthetic set, whose classes differ
    only in a small mark that a 20 % crop often cuts off."""
    return (0.5, 1.0) if args.dataset == "synthetic" else (0.2, 1.0)


def _dataset_error_types() -> Tuple[type, ...]:
    from tllib_tune.datasets import DatasetError

    return (DatasetError, FileNotFoundError, ValueError, OSError, RuntimeError)


def build_datasets(args: argparse.Namespace, env: Env) -> Dict[str, Any]:
    """train / val / test data sets; rank 0 prepares (downloads or generates) first, then the others."""
    from tllib_tune.datasets import get_dataset

    train_tf, val_tf = build_transforms(args)
    download = args.dataset != "synthetic"

    def make(split: str, transform: Any) -> Any:
        try:
            return get_dataset(
                args.dataset,
                args.root,
                split=split,
                sample_rate=args.sample_rate if split == "train" else 100,
                transform=transform,
                download=download,
                **getattr(args, "dataset_options", {}),
            )
        except _dataset_error_types() as exc:
            raise UserError(f"data set {args.dataset!r} at {args.root!r}: {one_line(exc)}") from None

    sets: Dict[str, Any] = {}
    for turn in ("main", "others"):
        if (turn == "main") == env.is_main:
            sets["train"] = make("train", train_tf)
            sets["test"] = make("test", val_tf)
            sets["train_eval"] = make("train", val_tf) if args.val_ratio > 0 else None
        env.barrier()
    full = sets["train"]
    sets["num_classes"] = full.num_classes
    if args.val_ratio > 0:
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
        n_val = max(1, round(len(full) * args.val_ratio))
        if n_val >= len(full):
            raise UserError(
                f"--val-ratio {args.val_ratio} leaves no training images out of {len(full)}; lower it"
            )
        sets["train"] = Subset(full, order[n_val:])
        sets["val"] = Subset(sets["train_eval"], order[:n_val])
    else:
        sets["val"] = None
    global_batch = args.batch_size * env.world
    if len(sets["train"]) < global_batch:
        raise UserError(
            f"--batch-size {args.batch_size} x {env.world} process(es) = {global_batch} is larger than the "
            f"training set ({len(sets['train'])} images of {args.dataset} at --sample-rate {args.sample_rate}"
            f"{f', --val-ratio {args.val_ratio}' if args.val_ratio else ''}); use --batch-size "
            f"{max(1, len(sets['train']) // env.world)} or less"
        )
    return sets


def build_model(
    args: argparse.Namespace, num_classes: int, env: Env, load_weights: bool = True
) -> Tuple[nn.Module, str]:
    """Classifier(backbone) with the requested weights; returns (model, description of the weights).
    With ``load_weights=False`` (a checkpoint will replace every weight) the network is built as
    --pretrained asks, learning rates included, but nothing is downloaded or read."""
    from tllib_tune.models import get_model
    from tllib_tune.modules.classifier import Classifier

    choice = args.pretrained
    if not load_weights:
        backbone = get_model(args.arch, pretrained=False)
        return Classifier(backbone, num_classes, finetune=choice.lower() != "none"), "no pretrained weights"
    if choice.lower() == "none":
        pretrained: Any = False
        what = "random initialisation (--pretrained none, no download)"
    elif choice.lower() == "imagenet":
        pretrained = True
        what = "torchvision ImageNet weights"
    else:
        if not os.path.isfile(choice):
            raise UserError(
                f"--pretrained {choice!r}: no such file; give a checkpoint file, 'imagenet' or 'none'"
            )
        pretrained = choice
        what = f"weights from {choice}"
    backbone = None
    for turn in ("main", "others"):  # rank 0 downloads first
        if (turn == "main") == env.is_main:
            try:
                backbone = get_model(args.arch, pretrained=pretrained)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                detail = one_line(exc).rstrip(".")
                if pretrained is True:
                    raise UserError(
                        f"could not load ImageNet weights for {args.arch}: {detail}. Or pass the weights "
                        "file as --pretrained FILE, or train from random weights with --pretrained none (or "
                        "run the offline --quick-start)"
                    ) from None
                raise UserError(
                    f"--pretrained {choice!r} does not fit --arch {args.arch}: {detail}"
                ) from None
        env.barrier()
    model = Classifier(backbone, num_classes, finetune=pretrained is not False)
    return model, what


def apply_mode(model: nn.Module, mode: str) -> None:
    """Put the backbone in ``mode`` (the head keeps training normally)."""
    backbone = unwrap_model(model).backbone
    if mode == "inplace-abn":
        try:
            convert_to_inplace_abn(backbone)
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"--mode inplace-abn cannot convert {args_arch(backbone)}: {one_line(exc)}"
            ) from None
        return
    set_mode(backbone, mode)


def args_arch(backbone: nn.Module) -> str:
    return str(getattr(backbone, "arch", type(backbone).__name__))


def amp_dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]


# ----------------------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{PROG}: {signal.Signals(signum).name} received: finishing this step and saving latest.pt "
            "(Ctrl-C again to quit without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self) -> bool:
        return self.signum is not None


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
def default_log_dir(args: argparse.Namespace) -> str:
    mode = args.mode if args.mode_schedule is None else "schedule"
    return os.path.join("runs", f"{args.dataset}_{args.arch}_{mode}_{time.strftime('%Y%m%d-%H%M%S')}")


def resolve_log_dir(args: argparse.Namespace) -> Path:
    if args.log is not None:
        return Path(args.log)
    if args.resume is not None:
        ckpt = Path(args.resume)
        if ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent
    return Path(default_log_dir(args))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Run-level figures from the per-epoch records (times weighted by iterations)."""

    def weighted(key: str, rows: List[Dict[str, Any]]) -> Optional[float]:
        pairs = [(r[key], r.get("iterations") or 1) for r in rows if r.get(key) is not None]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    def peak(key: str, rows: List[Dict[str, Any]]) -> Optional[float]:
        values = [r[key] for r in rows if r.get(key) is not None]
        return max(values) if values else None

    def figures(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "iter_time_s": weighted("iter_time_s", rows),
            "data_time_s": weighted("data_time_s", rows),
            "images_per_s": weighted("images_per_s", rows),
            "activations_mb": peak("activations_mb", rows),
            "peak_gb": peak("peak_gb", rows),
        }

    out = figures(records)
    by_mode: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        by_mode.setdefault(r["mode"], []).append(r)
    out["by_mode"] = {mode: figures(rows) for mode, rows in by_mode.items()}
    return out


def merge_partial(partial: Optional[Dict[str, float]], stats: Dict[str, float]) -> Dict[str, float]:
    """Combine the metrics of an epoch's steps before an interruption with those after the resume."""
    if not partial or not partial.get("iterations"):
        return stats
    if not stats.get("iterations"):
        merged = dict(partial)
        merged.update({k: stats[k] for k in ("next_iter", "stopped", "lr")})
        return merged
    n1, n2 = partial["iterations"], stats["iterations"]
    merged = dict(stats)
    for key in ("loss", "acc1"):
        merged[key] = (partial[key] * n1 + stats[key] * n2) / (n1 + n2)
    merged["iterations"] = n1 + n2
    return merged


def read_run_checkpoint(args: argparse.Namespace, log_dir: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint this run starts from (--resume, or for --phase test the run's best.pt, else
    latest.pt), read and checked against --arch; None for a fresh training run. Sets ``args.resume``
    to the file found. Refuses to train over an existing run without --resume."""
    if args.phase == "test" and args.resume is None:
        for name in ("best.pt", "latest.pt"):
            if (log_dir / "checkpoints" / name).exists():
                args.resume = str(log_dir / "checkpoints" / name)
                break
        else:
            raise UserError(
                "--phase test needs a checkpoint: give --resume FILE, or --log of a run with checkpoints"
            )
    if args.resume is None:
        if args.phase == "train" and (log_dir / "checkpoints" / "latest.pt").exists():
            raise UserError(
                f"{log_dir} already holds a run; add --resume {log_dir / 'checkpoints' / 'latest.pt'} to "
                "carry it on, or choose another --log"
            )
        return None
    try:
        checkpoint = load_checkpoint(args.resume)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    saved_arch = checkpoint.get("args", {}).get("arch")
    if saved_arch is not None and saved_arch != args.arch:
        raise UserError(
            f"checkpoint {args.resume!r} was made with --arch {saved_arch}, but this run uses --arch "
            f"{args.arch}; use the same --arch"
        )
    return checkpoint


def divergence_advice(mode: str, amp: str, pretrained: str) -> str:
    """What to change after a non-finite loss in ``mode``, given the run's --amp and --pretrained."""
    if mode == "deploy":
        return (
            "Deploy mode is unstable for fine-tuning: it trains the folded weights W*s directly, so "
            "updates are rescaled by the BatchNorm statistics. Tune mode computes the same function "
            "stably with the same memory: rerun with --mode tune"
        )
    tips = []
    if pretrained.lower() == "none" and mode in ("eval", "tune"):
        tips.append(
            f"with --pretrained none, give train mode more epochs before {mode} mode (a random network's "
            "BatchNorm running statistics take many steps to match the data)"
        )
    tips.append("lower --lr (or --lr-gamma if the rate grows)")
    if amp == "fp16":
        tips.append("use --amp bf16 (float32's range) or none")
    elif amp == "bf16":
        tips.append("try --amp none")
    text = "; or ".join(tips)
    return text[0].upper() + text[1:]


def run(args: argparse.Namespace, env: Env) -> int:
    say = print if env.is_main else (lambda *a, **k: None)
    device = setup_device(args, env)
    dtype = amp_dtype(args)
    if args.quick_start:
        say(
            f"Quick start (offline): a synthetic fine-grained data set generated under {args.root} on first "
            f"use, random initialisation (no pretrained download), {args.arch} at {args.input_size} px, "
            f"{args.epochs} epochs x {args.iters_per_epoch} steps of batch {args.batch_size}, modes by epoch "
            f"{args.mode_schedule or args.mode} (train mode first: a random network has no BatchNorm "
            "statistics "
            f"for tune mode to use), on {device}. About 1.5 min on 2 CPU cores.\n"
        )
    seed_everything(args.seed)
    # the checkpoint first: a missing or wrong one fails before data sets and weights are fetched
    log_dir = resolve_log_dir(args)
    checkpoint = read_run_checkpoint(args, log_dir)
    sets = build_datasets(args, env)
    num_classes = sets["num_classes"]
    # a checkpoint holds every weight of the model: no pretrained weights to fetch (or be offline for)
    model, weights = build_model(args, num_classes, env, load_weights=checkpoint is None)
    if checkpoint is not None:
        weights = f"weights from checkpoint {args.resume}"

    modes_used = {m for m, _, _ in args.schedule}
    if args.mode == "inplace-abn" and args.mode_schedule is None:
        apply_mode(model, "inplace-abn")
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    batch_statistics = sorted(modes_used & {"train", "inplace-abn"})
    if args.phase == "train" and batch_statistics:
        # per process, or over all of them where --sync-bn pools the statistics
        images = args.batch_size * (env.world if args.sync_bn and env.distributed else 1)
        smallest = smallest_feature_map(model, args.input_size)
        if images * smallest <= 1:
            raise UserError(
                f"--batch-size {args.batch_size} at --input-size {args.input_size}: "
                f"BatchNorm with batch statistics ({' and '.join(batch_statistics)} mode) needs more than "
                f"one value per channel, but {args.arch}'s smallest feature map holds {smallest} per image; "
                "use --batch-size 2 or more, or a larger --input-size"
            )
    if args.sync_bn:
        if env.distributed and "train" in modes_used:
            model = convert_sync_batchnorm(model)  # swaps BN children: ConvBN blocks stay
        elif env.distributed:
            say(f"note: --sync-bn has no effect in {'/'.join(sorted(modes_used))} mode (running statistics)")
        else:
            say("note: --sync-bn has no effect in a single process")

    optimizer, scheduler = build_optimizer(
        unwrap_model(model).get_parameters(args.lr),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.wd,
        milestones=args.lr_decay_epochs,
        gamma=args.lr_gamma,
    )
    scaler = None
    if args.amp == "fp16":  # float16 needs loss scaling; bfloat16 has float32's range and does not
        scaler = (
            torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
        )

    # ---- resume / test phase -------------------------------------------------------------------------
    start_epoch, start_iter = 0, 0
    state: Dict[str, Any] = {"best_val_acc1": None, "best_epoch": None, "partial": None}
    if checkpoint is not None:
        try:
            load_model_state(model, checkpoint["model"], source=f"checkpoint {args.resume!r}")
        except CheckpointError as exc:
            raise UserError(str(exc)) from None

    eval_kwargs = dict(device=device, amp_dtype=dtype, channels_last=args.channels_last, progress=env.is_main)
    loader_kwargs = dict(num_workers=args.workers, pin_memory=device.type == "cuda")

    def eval_loader(dataset: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=ShardSampler(len(dataset), env.rank, env.world),
            **loader_kwargs,
        )

    test_loader = eval_loader(sets["test"])
    if args.phase == "test":
        apply_mode(model, mode_for_epoch(args.schedule, args.epochs - 1))
        result = validate(unwrap_model(model), test_loader, desc="test", **eval_kwargs)
        say(
            f"test: acc1 {result['acc1']:.2f}  loss {result['loss']:.4f}  ({int(result['count'])} images, "
            f"checkpoint {args.resume})"
        )
        return 0

    if checkpoint is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if scaler is not None and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(
                f"checkpoint {args.resume!r} has an optimizer state that does not fit: {exc}"
            ) from None
        start_epoch, start_iter = int(checkpoint["epoch"]), int(checkpoint["iteration"])
        state.update({k: checkpoint.get(k) for k in ("best_val_acc1", "best_epoch", "partial")})
        set_rng_state(checkpoint["rng"])
        saved = checkpoint.get("args", {})
        differ = [
            f"--{k.replace('_', '-')} {saved[k]} -> {v}"
            for k, v in vars(args).items()
            if k in saved and k not in ("resume", "log", "phase", "schedule", "quick_start") and saved[k] != v
        ]
        say(f"resuming from {args.resume}: epoch {start_epoch}, step {start_iter}")
        if differ:
            say("note: these flags differ from the saved run: " + "; ".join(differ))
        if start_epoch >= args.epochs:
            raise UserError(
                f"checkpoint {args.resume!r} has already finished {start_epoch} epochs "
                f"(--epochs {args.epochs}); "
                "raise --epochs to train longer"
            )

    iters = args.iters_per_epoch
    global_step0 = start_epoch * iters + start_iter
    logger = RunLogger(
        log_dir,
        enabled=env.is_main,
        purge_step=global_step0 + 1 if checkpoint is not None else None,
        keep_epochs=start_epoch if checkpoint is not None else None,
    )
    records = (
        [r for r in read_jsonl(log_dir / "metrics.jsonl") if r.get("epoch", 0) < start_epoch]
        if env.is_main
        else []
    )

    if env.distributed:
        find_unused = "deploy" in modes_used  # deploy leaves BatchNorm's gamma out of the computation
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    sampler = EpochBatchSampler(
        len(sets["train"]), args.batch_size, iters, seed=args.seed, rank=env.rank, world_size=env.world
    )
    train_loader = DataLoader(
        SeededDataset(sets["train"]),
        batch_sampler=sampler,
        persistent_workers=args.workers > 0,
        **loader_kwargs,
    )
    val_loader = eval_loader(sets["val"]) if sets["val"] is not None else test_loader
    val_name = "val" if sets["val"] is not None else "test"
    ckpt_dir = log_dir / "checkpoints"

    n_params = sum(p.numel() for p in unwrap_model(model).parameters())
    say(f"run directory: {log_dir}")
    say(
        f"{args.dataset}: {len(sets['train'])} train / "
        f"{len(sets['val']) if sets['val'] is not None else 0} val / {len(sets['test'])} test images, "
        f"{num_classes} classes (chance {100 / num_classes:.1f}%)"
    )
    say(
        f"{args.arch} ({n_params / 1e6:.1f} M parameters), {weights}; backbone lr "
        f"{'0.1x' if unwrap_model(model).finetune else '1x'}; {env.world} process(es) on {device}, "
        f"batch {args.batch_size}/process, amp {args.amp}"
    )
    if args.val_ratio == 0:
        say(
            "no --val-ratio: no model selection; val/* in TensorBoard is the test split, the final epoch "
            "counts"
        )

    base_hparams = {
        "dataset": args.dataset,
        "arch": args.arch,
        "mode": args.mode_schedule or args.mode,
        "pretrained": args.pretrained,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "amp": args.amp,
        "sample_rate": args.sample_rate,
        "seed": args.seed,
        "epochs": args.epochs,
        "iters_per_epoch": iters,
        "world_size": env.world,
    }
    summary: Dict[str, Any] = {
        "status": "running",
        "args": {k: v for k, v in vars(args).items() if k != "schedule"},
        "num_classes": num_classes,
        "train_size": len(sets["train"]),
        "val_size": len(sets["val"]) if sets["val"] is not None else 0,
        "test_size": len(sets["test"]),
        "device": str(device),
        "world_size": env.world,
        "params": n_params,
        **base_hparams,
    }
    started = time.time()

    def save(path: Path, epoch: int, iteration: int, partial: Optional[Dict[str, float]] = None) -> None:
        if env.is_main:
            save_checkpoint(
                path,
                model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                epoch=epoch,
                iteration=iteration,
                args=summary["args"],
                extra={
                    "best_val_acc1": state["best_val_acc1"],
                    "best_epoch": state["best_epoch"],
                    "partial": partial,
                },
            )
        env.barrier()

    def finish(status: str, **extra: Any) -> None:
        summary.update(status=status, wall_time_s=time.time() - started, epochs_done=len(records), **extra)
        summary.update(summarize(records))
        summary["modes"] = block_modes(model)["counts"]
        logger.summary(summary)
        logger.flush()

    current_mode: Optional[str] = None
    last_val: Dict[str, float] = {}
    with StopFlag() as stop:
        try:
            for epoch in range(start_epoch, args.epochs):
                mode = args.mode if args.mode == "inplace-abn" else mode_for_epoch(args.schedule, epoch)
                if mode != current_mode:
                    if mode != "inplace-abn":
                        apply_mode(model, mode)
                    say(f"epoch {epoch}: backbone in {mode} mode ({block_modes(model)['counts']})")
                    current_mode = mode
                partial = state.pop("partial", None) if epoch == start_epoch else None
                state["partial"] = None
                begin = start_iter if epoch == start_epoch else 0
                if stop():
                    save(ckpt_dir / "latest.pt", epoch, begin, partial)
                    raise Stopped(stop.signum or signal.SIGINT)
                sampler.set_epoch(epoch, begin)

                def on_step(step: int, values: Dict[str, float], epoch: int = epoch) -> None:
                    g = epoch * iters + step + 1
                    logger.scalars(
                        {
                            "train/loss": values["loss"],
                            "train/acc1": values["acc1"],
                            "train/lr": values["lr"],
                        },
                        g,
                    )

                stats = train_one_epoch(
                    model,
                    train_loader,
                    optimizer,
                    epoch=epoch,
                    iters_per_epoch=iters,
                    start_iter=begin,
                    device=device,
                    scaler=scaler,
                    amp_dtype=dtype,
                    channels_last=args.channels_last,
                    on_step=on_step,
                    should_stop=stop,
                    progress=env.is_main,
                )
                stats = merge_partial(partial, stats)
                if stats["stopped"]:
                    save(ckpt_dir / "latest.pt", epoch, int(stats["next_iter"]), stats)
                    raise Stopped(stop.signum or signal.SIGINT)
                val = validate(
                    unwrap_model(model), val_loader, should_stop=stop, desc=val_name, **eval_kwargs
                )
                if val["stopped"]:
                    save(ckpt_dir / "latest.pt", epoch, iters, stats)
                    raise Stopped(stop.signum or signal.SIGINT)
                last_val = val
                step = (epoch + 1) * iters
                logger.scalars(
                    {
                        "perf/iter_time_s": stats["iter_time_s"],
                        "perf/data_time_s": stats["data_time_s"],
                        "perf/images_per_s": stats["images_per_s"],
                        "memory/activations_mb": stats["activations_mb"],
                        "memory/peak_gb": stats["peak_gb"],
                        "val/loss": val["loss"],
                        "val/acc1": val["acc1"],
                    },
                    step,
                )
                record = {
                    "epoch": epoch,
                    "mode": mode,
                    "lr": stats["lr"],
                    "train_loss": stats["loss"],
                    "train_acc1": stats["acc1"],
                    f"{val_name}_loss": val["loss"],
                    f"{val_name}_acc1": val["acc1"],
                    **{
                        k: stats[k]
                        for k in (
                            "iter_time_s",
                            "data_time_s",
                            "images_per_s",
                            "activations_mb",
                            "peak_gb",
                            "iterations",
                        )
                    },
                }
                records.append(record)
                logger.epoch_record(record)
                say(
                    f"epoch {epoch + 1}/{args.epochs} [{mode}] lr {stats['lr']:.2g}  "
                    f"train loss {stats['loss']:.4f} "
                    f"acc1 {stats['acc1']:.1f}  {val_name} loss {val['loss']:.4f} acc1 {val['acc1']:.2f}  "
                    f"{stats['iter_time_s']:.3f} s/it  activations {stats['activations_mb']:.1f} MiB  "
                    f"peak {stats['peak_gb']:.2f} GiB"
                )
                scheduler.step()
                if sets["val"] is not None and (
                    state["best_val_acc1"] is None or val["acc1"] > state["best_val_acc1"]
                ):
                    state["best_val_acc1"], state["best_epoch"] = val["acc1"], epoch
                    save(ckpt_dir / "best.pt", epoch + 1, 0)
                save(ckpt_dir / "latest.pt", epoch + 1, 0)
                finish("running")
        except NonFiniteLossError as exc:
            latest = ckpt_dir / "latest.pt"
            kept = (
                f"the last good checkpoint is {latest}"
                if latest.exists()
                else "no checkpoint was written yet"
            )
            finish(
                "diverged", diverged_at={"epoch": exc.epoch, "iteration": exc.iteration, "loss": exc.value}
            )
            advice = divergence_advice(current_mode, args.amp, args.pretrained)
            raise Diverged(
                f"the loss became {exc.value} at epoch {exc.epoch}, iteration {exc.iteration} "
                f"(global step {exc.epoch * iters + exc.iteration}) in {current_mode} mode; stopped without "
                f"saving, {kept}. {advice}"
            ) from None
        except Stopped:
            finish("interrupted")
            say(
                f"stopped: saved {ckpt_dir / 'latest.pt'}; carry on with the same command plus "
                f"--resume {ckpt_dir / 'latest.pt'}"
            )
            raise

    final = (
        {"test_acc1": last_val.get("acc1"), "test_loss": last_val.get("loss")} if val_name == "test" else {}
    )
    if sets["val"] is not None:
        test = validate(unwrap_model(model), test_loader, desc="test", **eval_kwargs)
        final = {
            "test_acc1": test["acc1"],
            "test_loss": test["loss"],
            "best_val_acc1": state["best_val_acc1"],
            "best_epoch": state["best_epoch"],
        }
        best_path = ckpt_dir / "best.pt"
        env.barrier()
        if best_path.exists():
            best = load_checkpoint(best_path)
            load_model_state(model, best["model"])
            final["best_test_acc1"] = validate(
                unwrap_model(model), test_loader, desc="test (best)", **eval_kwargs
            )["acc1"]
    if final.get("test_acc1") is None and records:  # resumed after the last epoch's evaluation
        final["test_acc1"] = records[-1].get("test_acc1")
    final["chance_acc1"] = 100.0 / num_classes
    finish("completed", **final)
    logger.hparams(
        base_hparams,
        {
            "hparam/acc1": final.get("test_acc1"),
            "hparam/val_acc1": final.get("best_val_acc1"),
            "hparam/iter_time_s": summary.get("iter_time_s"),
            "hparam/activations_mb": summary.get("activations_mb"),
            "hparam/peak_gb": summary.get("peak_gb"),
        },
    )
    logger.close()
    line = f"final test acc1 {final['test_acc1']:.2f}% (chance {final['chance_acc1']:.1f}%)"
    if "best_test_acc1" in final:
        line += f"; best on val (epoch {final['best_epoch']}): test acc1 {final['best_test_acc1']:.2f}%"
    say(line + f"; summary in {log_dir / 'summary.json'}")
    return 0


def _oom_message(args: argparse.Namespace, exc: BaseException) -> str:
    mode = args.mode_schedule or args.mode
    advice = (
        "use a smaller --batch-size or --input-size"
        if mode == "tune"
        else "use --mode tune (it keeps only each ConvBN's input for backward) or a smaller --batch-size"
    )
    return (
        f"out of memory in {mode} mode with --batch-size {args.batch_size} at {args.input_size} px "
        f"(amp {args.amp}): {advice}; --amp fp16/bf16 also saves memory. ({str(exc).splitlines()[0]})"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    env = Env()

    def fail(message: str, code: int) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return code

    try:
        return run(args, env)
    except (UserError, Diverged) as exc:
        return fail(str(exc), exc.exit_code)
    except Stopped as exc:
        return exc.exit_code
    except DataLoadingError as exc:
        return fail(f"loading a batch of {args.dataset} from {args.root!r} failed: {exc}", EXIT_USER_ERROR)
    except OUT_OF_MEMORY as exc:
        return fail(_oom_message(args, exc), EXIT_USER_ERROR)
    except RuntimeError as exc:
        if "out of memory" in str(exc) or "can't allocate memory" in str(exc):
            return fail(_oom_message(args, exc), EXIT_USER_ERROR)
        raise
    except KeyboardInterrupt:
        return fail("interrupted (no checkpoint saved)", 128 + signal.SIGINT)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
