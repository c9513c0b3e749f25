"""tllib_tune.benchmark.profile through scripts/profile_modes.py: a tiny run lists the operators that
differ between two modes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "profile_modes.py"


def _run(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_tiny_profile_lists_tune_only_work():
    proc = _run(
        "--arch", "resnet18", "--batch-size", "2", "--input-size", "32", "--iterations", "2",
        "--warmup", "0", "--top", "40", "--device", "cpu", "--modes", "tune,deploy",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "environment: " in out and "minor page faults / iteration" in out
    table = out[out.index("operator (self CPU time") :].splitlines()
    rows = {line[:58].strip(): line[58:].split() for line in table[1:] if line.strip()}
    # Tune's backward is its own autograd function: present in tune, absent in deploy
    tune_ms, deploy_ms, _, calls = rows["TuneFunctionBackward"]
    assert float(tune_ms) > 0 and float(deploy_ms) == 0
    assert calls.endswith("/0") and int(calls.split("/")[0]) == 20  # resnet18: 20 ConvBN blocks
    assert "all operators" in rows


def test_bad_modes_exit_non_zero_with_a_message():
    proc = _run("--modes", "tune", "--device", "cpu")
    assert proc.returncode == 2 and "two of" in proc.stderr and "deploy" in proc.stderr


def test_a_batch_of_one_1x1_map_in_train_mode_exits_with_the_fix():
    proc = _run(
        "--arch", "resnet18", "--batch-size", "1", "--input-size", "32", "--modes", "train,tune",
        "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--batch-size 1 at --input-size 32" in proc.stderr and "use --batch-size 2 or more" in proc.stderr


def test_compiled_modes_are_compiled_first_and_profiled():
    # aot_eager runs the compiled graphs as aten operators (no C++ compiler needed), so the profile sees them
    proc = _run(
        "--arch", "resnet18", "--batch-size", "2", "--input-size", "32", "--iterations", "2", "--warmup", "0",
        "--top", "60", "--device", "cpu", "--modes", "compiled-tune,compiled-deploy", "--compile-backend",
        "aot_eager",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for mode in ("compiled-tune", "compiled-deploy"):
        assert re.search(rf"{mode}: .* compiled in a first iteration of [0-9.]+ s", out), out
    table = out[out.index("operator (self CPU time") :].splitlines()
    rows = {line[:58].strip(): line[58:].split() for line in table[1:] if line.strip()}
    assert rows["aten::convolution_backward"][-1] == "20/20"  # both ran forward and backward, 20 blocks
    # compiled Tune folds W * s in every step (and again in backward); compiled Deploy folded once, before
    tune_muls, deploy_muls = (int(n) for n in rows["aten::mul"][-1].split("/"))
    assert tune_muls >= 2 * 20 and deploy_muls == 0


def test_a_mode_the_model_cannot_run_exits_with_the_fix():
    proc = _run(
        "--arch", "timm/resnet18", "--batch-size", "2", "--input-size", "32", "--device", "cpu",
        "--modes", "compiled-pass,tune", "--compile-backend", "aot_eager",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "timm/resnet18" in proc.stderr and "leave compiled-pass out of --modes" in proc.stderr
