"""Every setting of a fine-tuning run in one dataclass, checked when it is built.

Each field carries what a command line needs (flags, help, group) in its metadata, so that
:mod:`tllib_tune.finetune.cli` builds its parser from this one table and a config file's keys are the
field names. The flags follow TLlib's task_adaptation/image_classification/erm.py where they overlap.

    config = FinetuneConfig(dataset="synthetic", arch="resnet18", pretrained="none", epochs=2)
    config.schedule        # [("tune", 0, 2)]
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..common import suggest
from .errors import ConfigError
from .schedule import MODES, Segment, parse_mode_schedule

__all__ = [
    "FinetuneConfig",
    "ConfigField",
    "config_fields",
    "SAMPLE_RATES",
    "AMP_CHOICES",
    "PHASES",
    "TEST_PHASES",
    "SCHEDULES",
]

SAMPLE_RATES = (100, 50, 30, 15)
AMP_CHOICES = ("none", "fp16", "bf16")
PHASES = ("train", "test", "analysis")
#: The phases that evaluate a checkpoint instead of training.
TEST_PHASES = ("test", "analysis")
SCHEDULES = ("step", "cosine")


def _dataset_names() -> List[str]:
    from ..datasets import ALIASES, list_datasets

    return list_datasets() + sorted(ALIASES)


def _option(
    default: Any,
    *flags: str,
    help: str,
    group: Optional[str] = None,
    kind: Optional[type] = None,
    choices: Any = None,
    many: bool = False,
    metavar: Optional[str] = None,
) -> Any:
    """A field with its command-line description (``flags`` empty: not a flag). ``kind`` is what a value
    is converted to (int, float, str, bool, dict; default: the default's type), ``choices`` a tuple or a
    function returning one, ``many`` a list of ``kind``, ``metavar`` the value's name in --help."""
    kind = kind or (type(default[0]) if many else type(default) if default is not None else str)
    meta = {"flags": flags, "group": group, "help": help, "kind": kind, "choices": choices, "many": many}
    meta["metavar"] = metavar
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FinetuneConfig:
    """The settings of one run; a bad value raises :class:`ConfigError` naming it."""

    # data
    dataset: str = _option(
        "cub200", "-d", "--dataset", group="data", choices=_dataset_names, help="data set (default: cub200)"
    )
    root: Optional[str] = _option(
        None, "--root", group="data", help="data set root (default: data/<dataset>)"
    )
    sample_rate: int = _option(
        100, "-sr", "--sample-rate", group="data", choices=SAMPLE_RATES,
        help="percent of the training set per class, TLlib's protocol (default: 100)",
    )  # fmt: skip
    input_size: int = _option(
        224, "--input-size", group="data",
        help="crop size in pixels: 224 (TLlib), 448 (the paper), or a small size such as 64 for quick runs",
    )  # fmt: skip
    val_ratio: float = _option(
        0.0, "--val-ratio", group="data",
        help="hold out this fraction of train for validation and model selection (best.pt); default 0: "
        "no selection, the final epoch's test accuracy is reported",
    )  # fmt: skip
    workers: int = _option(
        2, "-j", "--workers", group="data", help="DataLoader worker processes (default: 2)"
    )
    dataset_options: Dict[str, Dict[str, Any]] = _option(
        {}, help="reader options per data set name, passed to get_dataset when that set is used (config "
        'files only), e.g. {"synthetic": {"images_per_class": 100}}',
    )  # fmt: skip
    # model
    arch: str = _option(
        "resnet50", "-a", "--arch", group="model", help="backbone, any tllib_tune model (default: resnet50)"
    )
    pretrained: str = _option(
        "imagenet", "--pretrained", group="model",
        help='"imagenet" (default: torchvision ImageNet weights, downloaded once), "none" (random '
        "initialisation) or a checkpoint file",
    )  # fmt: skip
    mode: str = _option(
        "tune", "--mode", group="model", choices=MODES,
        help="how the backbone's ConvBN blocks compute (default: tune)",
    )  # fmt: skip
    mode_schedule: Optional[str] = _option(
        None, "--mode-schedule", group="model", metavar="SCHEDULE",
        help='modes by epoch, e.g. "train:0-12,tune:12-20" (the paper\'s Appendix I); overrides --mode; '
        '"none": no schedule',
    )  # fmt: skip
    # optimisation (TLlib's erm.py)
    batch_size: int = _option(
        48, "-b", "--batch-size", group="optim", help="images per step and process (default: 48)"
    )
    lr: float = _option(
        0.01, "--lr", group="optim", help="learning rate of the head; backbone 0.1x (default: 0.01)"
    )
    sched: str = _option(
        "step", "--sched", group="optim", choices=SCHEDULES,
        help="learning-rate decay: step (default: TLlib's, x --lr-gamma at each of --lr-decay-epochs) or "
        "cosine (to 0 at the last step, per step)",
    )  # fmt: skip
    lr_gamma: float = _option(0.1, "--lr-gamma", group="optim", help="step decay's factor (default: 0.1)")
    lr_decay_epochs: List[int] = _option(
        [12], "--lr-decay-epochs", group="optim", many=True,
        help="step decay's milestones, in epochs done (default: 12: from epoch 13 on)",
    )  # fmt: skip
    warmup_epochs: float = _option(
        0.0, "--warmup-epochs", group="optim",
        help="linear learning-rate warm-up over this many epochs, per step (default: 0, none)",
    )  # fmt: skip
    label_smoothing: float = _option(
        0.0, "--label-smoothing", group="optim",
        help="label smoothing of the training loss, in [0, 1) (default: 0; evaluation loss never smoothed)",
    )  # fmt: skip
    grad_accum_steps: int = _option(
        1, "--grad-accum-steps", group="optim",
        help="micro-batches of --batch-size per optimizer step, gradients summed (default: 1); the step's "
        "batch is --batch-size x this",
    )  # fmt: skip
    momentum: float = _option(0.9, "--momentum", group="optim", help="SGD momentum, Nesterov (default: 0.9)")
    wd: float = _option(5e-4, "--wd", "--weight-decay", group="optim", help="weight decay (default: 5e-4)")
    epochs: int = _option(20, "--epochs", group="optim", help="number of epochs (default: 20)")
    iters_per_epoch: int = _option(
        500, "-i", "--iters-per-epoch", group="optim", help="steps per epoch (default: 500)"
    )
    seed: int = _option(0, "--seed", group="optim", help="random seed: data order, augmentation, head init")
    # run
    amp: str = _option("none", "--amp", group="run", choices=AMP_CHOICES, help="mixed precision (fp16: CUDA)")
    channels_last: bool = _option(False, "--channels-last", group="run", help="channels_last memory format")
    device: str = _option(
        "auto", "--device", group="run", help='"auto" (default: cuda if available), "cpu", "cuda", "cuda:1"'
    )
    sync_bn: bool = _option(
        False, "--sync-bn", group="run", help="SyncBatchNorm across processes (train mode, CUDA)"
    )
    grad_checkpointing: bool = _option(
        False, "--grad-checkpointing", group="run",
        help="recompute each backbone stage's activations in backward (torch.utils.checkpoint): less "
        "activation memory, more time (default: off)",
    )  # fmt: skip
    compile: bool = _option(
        False, "--compile", group="run", help="torch.compile the model for training (default: off)"
    )
    compile_backend: str = _option(
        "inductor", "--compile-backend", group="run",
        help="torch.compile's backend with --compile (default: inductor)",
    )  # fmt: skip
    log: Optional[str] = _option(
        None, "--log", group="run",
        help="run directory (default: runs/<dataset>_<arch>_<mode>_<time>, or the --resume checkpoint's run)",
    )  # fmt: skip
    resume: Optional[str] = _option(
        None, "--resume", group="run", metavar="CHECKPOINT", help="carry on from <log>/checkpoints/latest.pt"
    )
    save_every: int = _option(
        0, "--save-every", group="run", metavar="STEPS",
        help="also write latest.pt every this many optimizer steps, atomically (default: 0: at epoch ends "
        "and on SIGINT/SIGTERM only)",
    )  # fmt: skip
    phase: str = _option(
        "train", "--phase", group="run", choices=PHASES,
        help="train (default); test: evaluate a checkpoint (--resume, else <log>/checkpoints/best.pt or "
        "latest.pt) on the test split, with the data set and model settings it saved; analysis: the same, "
        "plus per-class accuracy and a confusion summary in <log>/analysis/",
    )  # fmt: skip
    progress_interval: float = _option(
        30.0, "--progress-interval", group="run", metavar="SECONDS",
        help="without a terminal (a pipe, nohup, a batch log), a progress line every this many seconds; "
        "log.txt gets the same lines (default: 30)",
    )  # fmt: skip
    quick_start: bool = _option(False, help="the offline demo (the command line's --quick-start)")
    config: Optional[str] = _option(None, help="the config file the settings came from (None: none)")

    def __post_init__(self) -> None:
        for field_ in config_fields():
            setattr(self, field_.name, field_.convert(getattr(self, field_.name)))
        if self.mode_schedule is not None and self.mode_schedule.strip().lower() in ("", "none"):
            self.mode_schedule = None
        if self.root is None:
            self.root = os.path.join("data", self.dataset)
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work."""
        for argument, ok, message in self._range_checks():
            if not ok:
                raise ConfigError(message, argument=argument)
        self.schedule  # noqa: B018  (parsing it is the check)
        from ..models import check_model

        try:
            check_model(self.arch)
        except ValueError as exc:
            raise ConfigError(str(exc), argument="arch") from None

    def _range_checks(self) -> List[Tuple[str, bool, str]]:
        return [
            ("batch_size", self.batch_size >= 1, f"`batch_size` must be >= 1, got {self.batch_size}"),
            ("epochs", self.epochs >= 1, f"`epochs` must be >= 1, got {self.epochs}"),
            ("iters_per_epoch", self.iters_per_epoch >= 1,
             f"`iters_per_epoch` must be >= 1, got {self.iters_per_epoch}"),
            ("workers", self.workers >= 0, f"`workers` must be >= 0, got {self.workers}"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), f"`lr` must be a positive number, got {self.lr}"),
            ("val_ratio", 0.0 <= self.val_ratio < 1.0,
             f"`val_ratio` must be in [0, 1), got {self.val_ratio}"),
            ("input_size", self.input_size >= 16,
             f"`input_size` must be >= 16 pixels (224 or 448 for real runs), got {self.input_size}"),
            ("lr_decay_epochs", all(e >= 0 for e in self.lr_decay_epochs),
             f"`lr_decay_epochs` must be >= 0, got {self.lr_decay_epochs}"),
            ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs,
             f"`warmup_epochs` must be >= 0 and less than `epochs` {self.epochs}, got {self.warmup_epochs}"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0,
             f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}"),
            ("grad_accum_steps", self.grad_accum_steps >= 1,
             f"`grad_accum_steps` must be >= 1, got {self.grad_accum_steps}"),
            ("save_every", self.save_every >= 0,
             f"`save_every` must be >= 0 steps (0: at epoch ends only), got {self.save_every}"),
            ("progress_interval", math.isfinite(self.progress_interval) and self.progress_interval >= 0,
             f"`progress_interval` must be >= 0 seconds, got {self.progress_interval}"),
            ("compile_backend", bool(self.compile_backend.strip()),
             "`compile_backend` must name a torch.compile backend, e.g. inductor"),
            ("dataset_options", all(isinstance(v, dict) for v in self.dataset_options.values()),
             "`dataset_options` maps a data set name to its reader options, e.g. "
             f"{{'synthetic': {{'images_per_class': 100}}}}, got {self.dataset_options!r}"),
        ]  # fmt: skip

    @property
    def schedule(self) -> List[Segment]:
        """[(mode, first_epoch, end_epoch)]: `mode_schedule` parsed, or `mode` for every epoch."""
        if self.mode_schedule is None:
            return [(self.mode, 0, self.epochs)]
        try:
            return parse_mode_schedule(self.mode_schedule, self.epochs)
        except ValueError as exc:
            raise ConfigError(str(exc), argument="mode_schedule") from None

    @property
    def modes_used(self) -> List[str]:
        """Every mode the run's backbone computes in, sorted."""
        return sorted({mode for mode, _, _ in self.schedule})

    @property
    def reader_options(self) -> Dict[str, Any]:
        """The `dataset_options` of this run's data set."""
        return dict(self.dataset_options.get(self.dataset, {}))

    def to_dict(self) -> Dict[str, Any]:
        """The settings as plain values (saved with checkpoints and in summary.json)."""
        return dataclasses.asdict(self)


_KIND_NAMES = {
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "booleans"),
    dict: ("a mapping", "mappings"),
}


@dataclass(frozen=True)
class ConfigField:
    """A setting's name, default and command-line description, and the conversion of its values."""

    name: str
    default: Any
    flags: Tuple[str, ...]
    group: Optional[str]
    help: str
    kind: type
    choices: Optional[Tuple[Any, ...]]
    many: bool
    metavar: Optional[str] = None

    def convert(self, value: Any) -> Any:
        """``value`` as this setting's type (numbers from strings too, as a command line gives them);
        :class:`ConfigError` when it is not one, or not one of the choices."""
        if value is None and self.default is None:
            return None
        if self.many:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [self._one(item) for item in items]
        return self._one(value)

    def _one(self, value: Any) -> Any:
        converted = _convert(self.kind, value)
        if converted is None:
            what = f"a list of {_KIND_NAMES[self.kind][1]}" if self.many else _KIND_NAMES[self.kind][0]
            raise ConfigError(f"`{self.name}` must be {what}, got {value!r}", argument=self.name)
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(
                f"`{self.name}` {converted!r} is not a choice; {suggest(converted, map(str, self.choices))}",
                argument=self.name,
            )
        return converted


def _convert(kind: type, value: Any) -> Any:
    """``value`` as ``kind``, or None where it is not one (a bool is never a number)."""
    if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return float(value) if kind is float else value
    if isinstance(value, bool) or kind in (bool, dict):
        return None
    if kind is float and isinstance(value, int):
        return float(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return None
    return None


def config_fields() -> List[ConfigField]:
    """The fields of :class:`FinetuneConfig` in order (``flags == ()``: not on the command line)."""
    found = []
    for f in dataclasses.fields(FinetuneConfig):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        choices = meta["choices"]
        found.append(
            ConfigField(
                name=f.name,
                default=default,
                flags=tuple(meta["flags"]),
                group=meta["group"],
                help=meta["help"],
                kind=meta["kind"],
                choices=tuple(choices() if callable(choices) else choices) if choices else None,
                many=meta["many"],
                metavar=meta["metavar"],
            )
        )
    return found
