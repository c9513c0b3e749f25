"""Helpers of the command-line layer: library messages name arguments in backquotes (`batch_size`); a
command line shows its own flags there (``--batch-size``) and reports an error as one line.

    flags = flag_names(parser)                      # {"batch_size": "--batch-size", ...}
    print(to_flags("use `batch_size` 8", flags))    # use --batch-size 8
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, Mapping, Optional

__all__ = ["flag_names", "argument_label", "to_flags", "plain", "print_error"]

_ARGUMENT = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def flag_names(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Each option's destination and its first long flag (``wd`` -> ``--wd``)."""
    flags = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        long = [s for s in action.option_strings if s.startswith("--")]
        if long and action.dest not in flags:
            flags[action.dest] = long[0]
    return flags


def argument_label(parser: argparse.ArgumentParser, dest: str) -> Optional[str]:
    """The option's flags as argparse's own errors name them ("-a/--arch"), or None."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return "/".join(action.option_strings)
    return None


def to_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each `name` written as its flag (a name without a flag loses its backquotes)."""
    return _ARGUMENT.sub(lambda m: flags.get(m.group(1), m.group(1)), message)


def plain(message: str) -> str:
    """``message`` with the backquotes around argument names removed (for a config file's keys)."""
    return _ARGUMENT.sub(lambda m: m.group(1), message)


def print_error(prog: str, message: str) -> None:
    """``prog: error: message`` on stderr, the message on one line."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
