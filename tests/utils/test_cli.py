"""tllib_tune.utils.cli: library messages' `argument` names become a command line's flags."""

from __future__ import annotations

import argparse

from tllib_tune.utils.cli import argument_label, flag_names, plain, print_error, to_flags


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("-b", "--batch-size", type=int)
    p.add_argument("--wd", "--weight-decay", dest="wd", type=float)
    p.add_argument("-a", "--arch")
    p.add_argument("root")
    return p


def test_flags_and_labels_follow_the_parser():
    assert flag_names(parser()) == {
        "help": "--help",
        "batch_size": "--batch-size",
        "wd": "--wd",
        "arch": "--arch",
    }
    assert argument_label(parser(), "arch") == "-a/--arch" and argument_label(parser(), "root") is None


def test_backquoted_names_become_flags_or_plain_names():
    flags = flag_names(parser())
    message = (
        "`batch_size` 100 is larger than the set; use `batch_size` 60, `wd` 0 or fix `root` (`x-y` stays)"
    )
    assert (
        to_flags(message, flags)
        == "--batch-size 100 is larger than the set; use --batch-size 60, --wd 0 or fix root (`x-y` stays)"
    )
    assert (
        plain(message)
        == "batch_size 100 is larger than the set; use batch_size 60, wd 0 or fix root (`x-y` stays)"
    )


def test_an_error_is_one_line(capsys):
    print_error("prog", "first line\n  second line")
    assert capsys.readouterr().err == "prog: error: first line second line\n"
