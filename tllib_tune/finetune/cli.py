"""Fine-tune an ImageNet backbone on a fine-grained data set, TLlib-style, with a --mode switch.

    tllib-tune finetune --quick-start                           # offline, ~1.5 min on 2 CPU cores
    tllib-tune finetune -d cub200 -a resnet50 --mode tune       # the main job (data under data/cub200)
    tllib-tune finetune -d cub200 -a resnet50 --mode train      # TLlib's baseline, for comparison
    tllib-tune finetune -c configs/paper/cub200_tune.yaml --seed 1   # settings from a file, flags override
    torchrun --nproc_per_node 2 -- examples/finetune.py -d cub200 ...   # DistributedDataParallel

(``python examples/finetune.py ...`` is the same program. With torchrun, the `--` keeps torchrun from
reading our --log as an abbreviation of its --log-dir.)

The flags follow TLlib's task_adaptation/image_classification/erm.py where they overlap. --mode chooses
how the backbone's ConvBN blocks compute (train: BatchNorm with batch statistics, TLlib's default;
eval: frozen statistics; tune: eval's function with deploy's memory; deploy: folded weights;
inplace-abn: the In-Place ABN baseline). The classifier head (bottleneck + linear) is new and always
trains normally. Everything a run produces lands in --log: TensorBoard events (tb/), metrics.jsonl,
summary.json and checkpoints/{latest,best}.pt. Ctrl-C (or SIGTERM) saves latest.pt and exits; add
--resume <log>/checkpoints/latest.pt to the same command to carry on exactly where it stopped.

-c/--config FILE.yaml (or the name of a shipped file, e.g. quick_start, paper/cub200_tune): the file's
settings (keys are the flags' names with underscores) become the defaults, flags given on the command
line override them; --mode on the command line also replaces a file's mode_schedule.

Exit status: 0 done, 1 a user error (the message says what and how to fix it), 2 bad command line or
config file, 3 the loss became non-finite, 128+N stopped by signal N after saving latest.pt.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any, Dict, Optional, Sequence

from ..utils.cli import argument_label, flag_names, plain, print_error, to_flags
from .config import TEST_PHASES, FinetuneConfig, config_fields
from .config_files import QUICK_START, find_config, read_config_file
from .errors import ConfigError, Diverged, FinetuneError, Stopped
from .runner import Runner, saved_settings

__all__ = ["build_parser", "parse_config", "main", "EXIT_USER_ERROR", "EXIT_USAGE", "EXIT_DIVERGED"]

EXIT_USER_ERROR, EXIT_USAGE, EXIT_DIVERGED = 1, 2, 3
_GROUPS = {"data": "data", "model": "model", "optim": "optimisation (TLlib's erm.py)", "run": "run"}


def build_parser(prog: str = "tllib-tune finetune") -> argparse.ArgumentParser:
    """The command line, one flag per :class:`FinetuneConfig` field, plus --config and --quick-start.
    Options left out are absent from the namespace (``argument_default=SUPPRESS``): :func:`parse_config`
    layers them over a config file and the defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    for field_ in config_fields():
        if not field_.flags:
            continue
        kwargs: Dict[str, Any] = {"dest": field_.name, "help": field_.help}
        if field_.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=field_.kind, choices=field_.choices, nargs="+" if field_.many else None)
            kwargs["metavar"] = field_.metavar
        groups[field_.group].add_argument(*field_.flags, **kwargs)
    run = groups["run"]
    run.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="settings from a YAML file (or a shipped config's name, e.g. paper/cub200_tune); flags override",
    )
    run.add_argument(
        "--quick-start",
        action="store_true",
        help="offline demo: synthetic data, random init, resnet18 at 64 px, a few minutes on a CPU (the "
        "settings of configs/quick_start.yaml; flags override them)",
    )
    return parser


def _with_argument(exc: ConfigError) -> str:
    """The message, beginning with the setting it is about."""
    text = str(exc)
    if exc.argument is None or text.startswith(f"`{exc.argument}`"):
        return text
    return f"`{exc.argument}`: {text}"


def config_from(given: Dict[str, Any]) -> FinetuneConfig:
    """The run's settings: the defaults, then the config file's (`config`, or the quick start's), then
    for `phase` test/analysis the data set and model settings saved in the checkpoint
    (:data:`~tllib_tune.finetune.runner.FROM_CHECKPOINT`), then ``given`` (the flags on the command line)."""
    given = dict(given)
    name, quick = given.pop("config", None), given.pop("quick_start", False)
    if quick and name is not None:
        raise ConfigError(
            "`quick_start` runs the settings of quick_start.yaml: give it or `config`, not both",
            argument="quick_start",
        )
    name = QUICK_START if quick else name
    path = find_config(name) if name is not None else None
    from_file = read_config_file(path) if path is not None else {}
    layered = {**from_file, **given}
    saved = {}
    if layered.get("phase") in TEST_PHASES:
        saved = saved_settings(layered.get("log"), layered.get("resume"))
    if "mode" in given and "mode_schedule" not in given:
        from_file.pop("mode_schedule", None)  # an explicit --mode replaces the file's schedule
        saved.pop("mode_schedule", None)
    try:
        return FinetuneConfig(**{**from_file, **saved, **given, "quick_start": quick, "config": name})
    except ConfigError as exc:
        if exc.argument in from_file and exc.argument not in given:
            raise ConfigError(
                f"{path}: {_with_argument(exc)}", argument=exc.argument, source=str(path)
            ) from None
        raise


def _usage_error(parser: argparse.ArgumentParser, exc: ConfigError) -> str:
    """A ConfigError as the command line says it: a file's keys by name, flags as flags."""
    if exc.source is not None:
        return plain(str(exc))
    text = str(exc)
    if exc.argument is not None and not text.startswith(f"`{exc.argument}`"):
        text = f"argument {argument_label(parser, exc.argument) or exc.argument}: {text}"
    return to_flags(text, flag_names(parser))


def parse_config(argv: Optional[Sequence[str]] = None, prog: str = "tllib-tune finetune") -> FinetuneConfig:
    """The settings of ``argv``; a bad command line or config file exits with status 2 and one line."""
    parser = build_parser(prog)
    given = vars(parser.parse_args(argv))
    try:
        return config_from(given)
    except ConfigError as exc:
        parser.error(_usage_error(parser, exc))


def main(argv: Optional[Sequence[str]] = None, prog: str = "tllib-tune finetune") -> int:
    """Run the command line ``argv``; returns the exit status (see the module's doc)."""
    config = parse_config(argv, prog)
    flags = flag_names(build_parser(prog))
    runner = Runner(config, say=print, render=lambda line: to_flags(line, flags), name=prog)
    try:
        runner.run()
        return 0
    except Diverged as exc:
        print_error(prog, to_flags(str(exc), flags))
        return EXIT_DIVERGED
    except FinetuneError as exc:
        print_error(prog, to_flags(str(exc), flags))
        return EXIT_USER_ERROR
    except Stopped as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        print_error(prog, "interrupted (no checkpoint saved)")
        return 128 + signal.SIGINT
