"""scripts/device_check.sh on the CPU with tiny settings: the cuda-marked tests run on the CPU, the
benchmark and a fine-tune run, and the summary table holds every part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="the device check is a bash script")
def test_device_check_passes_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--out", str(out), "--steps", "2",
         "--finetune-modes", "tune", "--no-compile"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "cuda tests: " in summary and " passed" in summary.splitlines()[1]
    for mode in ("train", "eval", "tune", "deploy", "inplace-abn", "eval+ckpt", "tune+ckpt"):
        assert f"| 2 x 32 | {mode} |" in summary
    assert "| tune | completed | 2 |" in summary
    assert summary in proc.stdout and "device check passed" in proc.stdout


def test_device_check_refuses_a_bad_option(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "tpu"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--device tpu" in proc.stderr
