"""The ``tllib-tune`` command (setup.py's console script): one subcommand per program of the package.

    tllib-tune finetune --quick-start --log runs/x
    tllib-tune benchmark --arch resnet18 --batch-sizes 8 --input-sizes 64
    tllib-tune profile --arch resnet18 --modes tune,deploy
    tllib-tune reproduce --fast

A subcommand is one line in :data:`COMMANDS`: its name, the ``module:function`` that runs it (called
with the remaining arguments and ``prog="tllib-tune NAME"``, returning the exit status) and a summary.
Modules are imported only when their command runs, so ``tllib-tune --help`` is quick.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, NamedTuple, Optional, Sequence

from .common import suggest

__all__ = ["Command", "COMMANDS", "register", "main"]


class Command(NamedTuple):
    target: str
    """"module:function", the function taking (argv, prog) and returning the exit status."""
    summary: str


COMMANDS: Dict[str, Command] = {}


def register(name: str, target: str, summary: str) -> None:
    """Add the subcommand ``name``, run by ``target`` ("package.module:function")."""
    COMMANDS[name] = Command(target, summary)


register("finetune", "tllib_tune.finetune.cli:main", "fine-tune a backbone in a ConvBN mode (TLlib's recipe)")
register("benchmark", "tllib_tune.benchmark.cli:main", "time and activation memory of an iteration per mode")
register(
    "profile", "tllib_tune.benchmark.cli:profile_main", "two modes' iteration time, operator by operator"
)
register(
    "pool",
    "tllib_tune.benchmark.cli:pool_main",
    "several benchmark runs' iterations as one, and their spread",
)
register("reproduce", "tllib_tune.paper.cli:main", "the paper's claims offline: Table 3/5, Figure 2, float64")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    head = "usage: tllib-tune COMMAND [ARGS ...]   (tllib-tune COMMAND --help for its flags)"
    return "\n".join([head, "", "commands:", *lines])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tllib-tune COMMAND ARGS``; returns the command's exit status (2: no or an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tllib-tune: error: unknown command {name!r}; {suggest(name, COMMANDS)}", file=sys.stderr)
        return 2
    module, _, function = COMMANDS[name].target.partition(":")
    run = getattr(importlib.import_module(module), function)
    return int(run(rest, prog=f"tllib-tune {name}") or 0)


if __name__ == "__main__":
    sys.exit(main())
