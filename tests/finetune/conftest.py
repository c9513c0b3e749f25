"""Fixtures for the fine-tuning end-to-end tests: one synthetic data set and backbone file per session,
and a runner for examples/finetune.py (the documented entry point of tllib_tune.finetune) in a subprocess
with tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
import torch

from ..conftest import randomize_all_bn_

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "examples" / "finetune.py"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The synthetic set, generated once for every test (20 classes, 20 train + 20 test images each)."""
    from tllib_tune.datasets import get_dataset

    root = tmp_path_factory.mktemp("synthetic")
    get_dataset("synthetic", root, split="train")
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
    """Command-line flags for a run of a few seconds: resnet18 at 32 px, batch 4, 2 steps, 1 epoch."""
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
    args: List[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        args += [key] if value == "" else [key, value]
    return args


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
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
