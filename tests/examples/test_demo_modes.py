"""examples/demo_modes.py: the side-by-side table holds what the contract says, and bad sizes exit cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..finetune.conftest import REPO, subprocess_env

DEMO = REPO / "examples" / "demo_modes.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_table_shows_tune_equal_to_eval_with_about_half_the_memory():
    result = _run("--depth", "4", "--width", "16", "--batch-size", "2", "--size", "24")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = line.split()
        if len(cells) == 5 and cells[0] in ("eval", "tune", "deploy", "train"):
            rows[cells[0]] = cells[1:]
    assert set(rows) == {"eval", "tune", "deploy", "train"}
    out_diff, dx_diff, grad_diff, mib = (float(v) for v in rows["tune"])
    assert out_diff < 1e-12 and dx_diff < 1e-12 and grad_diff < 1e-12  # float64: round-off only
    assert mib < 0.6 * float(rows["eval"][3])
    assert float(rows["deploy"][3]) == mib and rows["deploy"][2] == "n/a"
    assert float(rows["train"][0]) > 1e-3  # batch statistics: a different function


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--depth", "0"], "--depth must be >= 1, got 0"),
        (["--size", "0"], "--size must be >= 1, got 0"),
        (["--batch-size", "1", "--size", "7"], "use --batch-size 2 or more"),
    ],
)
def test_bad_sizes_exit_with_the_fix(args, fragment):
    result = _run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment in result.stderr
