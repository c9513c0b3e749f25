"""tllib_tune.finetune's settings: the dataclass's checks in library terms, config files (file values are
defaults, flags override), the shipped files, and one-line errors naming the key and the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tllib_tune.finetune import ConfigError, FinetuneConfig, find_config, list_configs, read_config_file
from tllib_tune.finetune.cli import build_parser, parse_config
from tllib_tune.utils.cli import flag_names, to_flags

from .conftest import REPO, subprocess_env

# The quick start's settings as examples/finetune.py defined them before they became configs/quick_start.yaml.
OLD_QUICK_START = {
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


def usage_error(argv, capsys) -> str:
    """parse_config's exit: status 2 and its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, prog="finetune.py")
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def write_config(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        return path

    return write


def test_file_values_are_defaults_and_flags_override(write_config):
    path = write_config(
        "dataset: synthetic\narch: resnet18\nepochs: 3\nlr: 0.05\nlr_decay_epochs: 2\nmode: eval\n"
    )
    config = parse_config(["-c", str(path), "--epochs", "4", "-b", "8"])
    assert (config.dataset, config.arch, config.lr, config.mode) == ("synthetic", "resnet18", 0.05, "eval")
    assert (config.epochs, config.batch_size, config.lr_decay_epochs) == (4, 8, [2])  # flags win
    assert config.momentum == 0.9 and config.root == os.path.join("data", "synthetic")  # the defaults
    assert config.config == str(path) and config.to_dict()["config"] == str(path)  # recorded with the run


def test_the_quick_start_file_holds_the_old_quick_start(capsys):
    config = parse_config(["--quick-start"])
    assert {k: getattr(config, k) for k in OLD_QUICK_START} == OLD_QUICK_START
    assert config.dataset_options == {"synthetic": {"images_per_class": 100}} and config.quick_start
    assert parse_config(["-c", "quick_start"]).to_dict() == dict(
        config.to_dict(), quick_start=False, config="quick_start"
    )
    assert "give it or --config, not both" in usage_error(["--quick-start", "-c", "quick_start"], capsys)


def test_an_explicit_mode_replaces_the_files_schedule(write_config):
    path = write_config("mode_schedule: train:0-1,tune:1-2\nepochs: 2\narch: resnet18\n")
    assert parse_config(["-c", str(path)]).schedule == [("train", 0, 1), ("tune", 1, 2)]
    assert parse_config(["-c", str(path), "--mode", "deploy"]).schedule == [("deploy", 0, 2)]
    both = parse_config(["-c", str(path), "--mode", "eval", "--mode-schedule", "eval:0-2"])
    assert both.schedule == [("eval", 0, 2)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr_decay: [4]\n", "unknown key 'lr_decay'; did you mean lr_decay_epochs"),
        ("epochs: five\n", "epochs must be a whole number, got 'five'"),
        ("epochs: 2.5\n", "epochs must be a whole number, got 2.5"),
        ("channels_last: 1\n", "channels_last must be true or false, got 1"),
        ("mode: fast\n", "mode 'fast' is not a choice; "),
        ("lr_decay_epochs: [4, x]\n", "lr_decay_epochs must be a list of whole numbers, got 'x'"),
        ("epochs: 0\n", "epochs must be >= 1, got 0"),
        ("arch: resnet19\n", "arch: unknown model 'resnet19'; did you mean resnet18"),
        ("quick_start: true\n", "unknown key 'quick_start'"),
        ("- epochs\n", "expected a mapping of settings (key: value lines), got list"),
        ("epochs: [1\n", "not valid YAML"),
    ],
    ids=[
        "unknown-key",
        "text",
        "fraction",
        "bool",
        "choice",
        "list",
        "range",
        "arch",
        "flag-only",
        "list-file",
        "yaml",
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key(write_config, capsys, text, expected):
    path = write_config(text)
    line = usage_error(["-c", str(path)], capsys)
    assert line.startswith(f"finetune.py: error: {path}: "), line
    assert expected in line, line
    assert "`" not in line and "--" not in line  # a file's keys, not flags


def test_a_bad_flag_over_a_good_file_names_the_flag(write_config, capsys):
    path = write_config("epochs: 3\n")
    assert usage_error(["-c", str(path), "--epochs", "0"], capsys).endswith(
        "error: --epochs must be >= 1, got 0"
    )
    line = usage_error(["-c", str(path), "-a", "resnet19"], capsys)
    assert "error: argument -a/--arch: unknown model 'resnet19'; did you mean resnet18" in line


def test_a_config_that_is_not_there(capsys):
    line = usage_error(["-c", "quick_strat"], capsys)
    assert (
        "argument -c/--config: config file 'quick_strat' not found" in line
        and "did you mean quick_start" in line
    )


def test_the_library_names_arguments_not_flags():
    with pytest.raises(ConfigError, match=r"^`batch_size` must be >= 1, got 0$") as info:
        FinetuneConfig(batch_size=0)
    assert info.value.argument == "batch_size"
    with pytest.raises(
        ConfigError, match="ends after epoch 2 but the run has `epochs` 3; extend the last segment to 3"
    ):
        FinetuneConfig(mode_schedule="train:0-2", epochs=3)
    with pytest.raises(ConfigError, match=r"`lr` must be a number, got 'fast'"):
        FinetuneConfig(lr="fast")
    config = FinetuneConfig(epochs="3", lr=1, mode_schedule="None")  # converted as a command line would
    assert (config.epochs, config.lr, config.mode_schedule, config.schedule) == (
        3,
        1.0,
        None,
        [("tune", 0, 3)],
    )
    assert (
        to_flags("use `batch_size` 8 or `wd` 0", flag_names(build_parser())) == "use --batch-size 8 or --wd 0"
    )


def test_every_shipped_config_builds_and_the_paper_files_match_their_names():
    names = list_configs()
    assert "quick_start" in names
    paper = [n for n in names if n.startswith("paper/")]
    assert sorted(paper) == [
        f"paper/{d}_{m}" for d in ("aircraft", "cub200", "stanford_cars") for m in ("train", "tune")
    ]
    for name in paper:
        dataset, mode = re.fullmatch(r"paper/(\w+)_(train|tune)", name).groups()
        config = FinetuneConfig(**read_config_file(find_config(name)))
        assert (config.dataset, config.mode, config.schedule) == (dataset, mode, [(mode, 0, 20)])
        # the paper's recipe (Appendix D): ResNet-50, ImageNet weights, 448 px, batch 48, 20 x 500 steps
        assert (config.arch, config.pretrained, config.input_size, config.batch_size) == (
            "resnet50",
            "imagenet",
            448,
            48,
        )
        assert (config.epochs, config.iters_per_epoch, config.lr, config.lr_decay_epochs) == (
            20,
            500,
            0.01,
            [12],
        )
    assert find_config("paper/cub200_tune.yaml") == find_config("paper/cub200_tune")


_FAKE_PYTHON = """#!/bin/sh
# stands in for python: prints the settings examples/finetune.py would run with, skips the summary
case "$1" in
  examples/finetune.py) exec "$REAL_PYTHON" -c '
import sys
from tllib_tune.finetune.cli import parse_config
c = parse_config(sys.argv[2:])
print("run", c.config, c.dataset, c.mode, c.seed, c.input_size, c.root, c.log)' "$@" ;;
  *) echo "skipped $1" ;;
esac
"""


def test_the_paper_script_runs_the_paper_configs(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(subprocess_env(), PYTHON=str(fake), REAL_PYTHON=sys.executable, DATA="/data", SEEDS="1",
               DATASETS="aircraft", MODES="tune eval")  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "finetune_paper.sh"), str(tmp_path / "runs"), "--amp", "bf16"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("run ")]
    logs = [str(tmp_path / "runs" / f"aircraft_resnet50_{m}_seed1") for m in ("tune", "eval")]
    assert runs == [
        ["configs/paper/aircraft_tune.yaml", "aircraft", "tune", "1", "448", "/data/aircraft", logs[0]],
        ["configs/paper/aircraft_tune.yaml", "aircraft", "eval", "1", "448", "/data/aircraft", logs[1]],
    ]  # no file for eval: the tune file's recipe with --mode eval
    assert "skipped scripts/summarize_runs.py" in result.stdout
