"""Command line of the reproduction: ``python scripts/reproduce_paper.py [--fast] [--out DIR] ...``.

``main(argv) -> int`` parses the flags, runs :func:`tllib_tune.paper.experiment.run_experiment` and
turns every user error into one line on stderr and a non-zero exit status (2: a bad flag; 1: a problem
found while running, e.g. an unwritable folder or a missing plotting library).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, NoReturn, Optional, Sequence

import torch

from ..datasets import DatasetError
from .experiment import check_modes, check_seeds, run_experiment
from .progress import Progress
from .settings import DEFAULT, FAST, MODES

__all__ = ["main", "build_parser", "parse_args"]

PROG = "reproduce_paper.py"
EXIT_USER_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A bad command line; the message names the flag and the fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(message)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Reproduce the Tune-mode paper's claims offline on 2 CPU cores: pretrain on a synthetic "
        "source set, fine-tune on a new target set in every mode over seeds, write Table 3 / Table 5, "
        "Figure 2 and a float64 check (defaults: about 13 minutes on 2 quiet cores; --fast: about a minute).",
    )
    p.add_argument(
        "--out", default="runs/reproduce_paper", help="output folder (default: runs/reproduce_paper)"
    )
    p.add_argument(
        "--data",
        default="data/paper",
        help="folder for the generated data sets and the cached pretrained backbone (default: data/paper)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tuning seeds (default: 0,1,2)")
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated modes (default: {','.join(MODES)})"
    )
    p.add_argument("--fast", action="store_true", help="tiny images and a few steps: the tests' setting")
    p.add_argument(
        "--threads", default="2", help="torch CPU threads (default: 2; on a busy machine 1 is faster)"
    )
    return p


def _seeds(text: str) -> List[int]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise UsageError(
            f"--seeds {text!r}: expected comma-separated non-negative integers, e.g. --seeds 0,1,2"
        )
    try:
        return check_seeds([int(p) for p in parts])
    except ValueError as exc:
        raise UsageError(f"--seeds {text!r}: {exc}") from None


def _modes(text: str) -> List[str]:
    try:
        return check_modes([m.strip().lower() for m in text.split(",")])
    except ValueError as exc:
        raise UsageError(f"--modes {text!r}: {exc}") from None


def _threads(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"--threads {text!r}: expected a positive integer, e.g. --threads 2")
    return int(text)


def _folder(flag: str, text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {text!r} is a file, not a folder; give a folder path")
    return path


def parse_args(argv: Optional[Sequence[str]] = None, *, prog: str = PROG) -> argparse.Namespace:
    """Parse and check the flags; raises :class:`UsageError` naming the bad one."""
    args = build_parser(prog).parse_args(argv)
    args.seeds, args.modes, args.threads = _seeds(args.seeds), _modes(args.modes), _threads(args.threads)
    args.out, args.data = _folder("--out", args.out), _folder("--data", args.data)
    return args


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the Figure 2 PNGs need matplotlib, which is not installed: pip install 'tllib-tune[plot]'"
        ) from None


def busy_machine_hint(threads: int) -> Optional[str]:
    """A note when other processes already keep the CPUs busy: then several torch threads mostly wait on
    one another (measured here: 6.5 s per step with 2 threads against 1.0 s with 1, at a load of 5 on 2
    cores), and --threads 1 is much faster."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return None
    if threads > 1 and load >= cpus:
        return (
            f"note: the load average is {load:.1f} on {cpus} CPUs; on a busy machine --threads 1 is usually "
            f"much faster than --threads {threads}"
        )
    return None


def main(argv: Optional[Sequence[str]] = None, *, prog: str = PROG) -> int:
    """Run the reproduction; returns the exit status (0 done, 1 a problem while running, 2 bad flags).
    ``prog`` names the program in messages (``tllib-tune reproduce`` from the console script)."""
    try:
        args = parse_args(argv, prog=prog)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _check_plotting()
        args.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        progress = Progress(args.out / "reproduce.log")
    except (OSError, RuntimeError) as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    hint = busy_machine_hint(args.threads)
    if hint:
        progress.say(hint)
    try:
        run_experiment(
            FAST if args.fast else DEFAULT,
            out=args.out, data_dir=args.data, seeds=args.seeds, modes=args.modes, progress=progress,
            fast=args.fast,
        )  # fmt: skip
    except (OSError, DatasetError) as exc:  # an unwritable folder, a foreign data set in --data
        progress.say(f"error: {exc}")
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        progress.say("interrupted")
        return 130
    finally:
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
