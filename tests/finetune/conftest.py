"""Fixtures for the fine-tuning end-to-end tests: one synthetic data set and backbone file per session,
a runner for examples/finetune.py (the documented entry point of tllib_tune.finetune) in a subprocess
with tiny settings, one tiny run per mode (the reference curves other tests compare with), and readers
of what a run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ..conftest import randomize_all_bn_

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "examples" / "finetune.py"


#: The session's synthetic set: 20 classes of 5 train + 5 test images (the default is 20 + 20), so that
#: every epoch's evaluation reads 100 images, not 400. A run reads it with these reader options, which a
#: config file beside the data (TESTS_CONFIG) gives the command line: `dataset_options` has no flag.
SYNTHETIC_OPTIONS = {"images_per_class": 10}
TESTS_CONFIG = "tests_synthetic.yaml"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The synthetic set, generated once for every test (SYNTHETIC_OPTIONS), with its config file."""
    from tllib_tune.datasets import get_dataset

    root = tmp_path_factory.mktemp("synthetic")
    get_dataset("synthetic", root, split="train", **SYNTHETIC_OPTIONS)
    options = "".join(f"    {key}: {value}\n" for key, value in SYNTHETIC_OPTIONS.items())
    (root / TESTS_CONFIG).write_text(f"dataset_options:\n  synthetic:\n{options}")
    return root


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory) -> Path:
    """A resnet18 checkpoint with ImageNet-like BatchNorm statistics, standing in for pretrained weights."""
    from tllib_tune.models import get_model

    torch.manual_seed(0)
    backbone = randomize_all_bn_(get_model("resnet18"), seed=0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_bn.pth"
    torch.save(backbone.state_dict(), path)
    return path


def tiny_args(root: Path, log: Path, pretrained: Optional[Path] = None, **overrides) -> List[str]:
    """Command-line flags for a run of a few seconds: resnet18 at 32 px, batch 4, 2 steps, 1 epoch; a
    ``root`` holding the session's config file (:func:`synthetic_root` and copies of it) reads with it."""
    flags = {
        "--dataset": "synthetic",
        "--root": str(root),
        "--arch": "resnet18",
        "--pretrained": str(pretrained) if pretrained else "none",
        "--input-size": "32",
        "--batch-size": "4",
        "--iters-per-epoch": "2",
        "--epochs": "1",
        "--workers": "0",
        "--device": "cpu",
        "--log": str(log),
    }
    flags.update(
        {k if k.startswith("-") else "--" + k.replace("_", "-"): str(v) for k, v in overrides.items()}
    )
    if (root / TESTS_CONFIG).is_file() and "--config" not in flags:
        flags = {"--config": str(root / TESTS_CONFIG), **flags}
    args: List[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        args += [key] if value == "" else [key, value]
    return args


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # as tests/conftest.py: tiny runs, no spin-waiting on busy cores
    env.update(extra)
    return env


def run_finetune(args: Sequence[str], *, timeout: float = 300, env: Optional[dict] = None, cmd=None):
    """Run examples/finetune.py (or ``cmd`` + args) and return the CompletedProcess (text output)."""
    command = list(cmd) if cmd is not None else [sys.executable, str(FINETUNE)]
    return subprocess.run(
        command + list(args),
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


MODES = ["train", "eval", "tune", "deploy", "inplace-abn"]
#: The settings of the per-mode reference runs (tiny_args plus these).
MODE_RUN = {"epochs": 2, "seed": 3, "progress_interval": 0}


def assert_ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def scalars(log: Path, tag: str, sub: str = "") -> list:
    """(step, value) of a TensorBoard tag in a run directory."""
    acc = EventAccumulator(str(log / "tb" / sub) if sub else str(log / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def curve(log: Path, tag: str = "train/loss") -> torch.Tensor:
    return torch.tensor([v for _, v in scalars(log, tag)], dtype=torch.float64)


def records(log: Path) -> list:
    return [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]


def summary(log: Path) -> dict:
    return json.loads((log / "summary.json").read_text())


class _ModeRuns:
    """The per-mode reference runs, each made on first use (a test of one mode waits for that one only)."""

    def __init__(self, root: Path, backbone: Path, base: Path) -> None:
        self.root, self.backbone, self.base, self.runs = root, backbone, base, {}

    def __getitem__(self, mode: str):
        if mode not in self.runs:
            log = self.base / mode
            result = run_finetune(tiny_args(self.root, log, self.backbone, mode=mode, **MODE_RUN))
            self.runs[mode] = (result, log)
        return self.runs[mode]


@pytest.fixture(scope="session")
def mode_runs(synthetic_root, backbone_file, tmp_path_factory):
    """One run per mode (2 epochs x 2 steps, pretrained-like weights), plain progress lines at every step:
    ``mode_runs[mode]`` is (CompletedProcess, run directory)."""
    return _ModeRuns(synthetic_root, backbone_file, tmp_path_factory.mktemp("modes"))
