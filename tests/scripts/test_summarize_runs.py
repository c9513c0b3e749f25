"""scripts/summarize_runs.py: Table 3 layout from run directories' summary.json files."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "summarize_runs.py"


def write_run(root: Path, name: str, **fields):
    summary = {
        "status": "completed",
        "dataset": "cub200",
        "arch": "resnet50",
        "input_size": 448,
        "sample_rate": 100,
        "mode": "train",
        "test_acc1": 80.0,
        "peak_gb": 10.0,
        "activations_mb": 1000.0,
        "iter_time_s": 0.5,
    }
    summary.update(fields)
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(summary))


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_table_has_mean_std_and_savings(tmp_path):
    train_acc, tune_acc = [81.0, 82.0, 80.5], [81.5, 81.0, 82.5]
    for seed, acc in enumerate(train_acc):
        write_run(tmp_path, f"cub_train_{seed}", test_acc1=acc, peak_gb=10.0, iter_time_s=0.5)
    for seed, acc in enumerate(tune_acc):
        write_run(
            tmp_path,
            f"cub_tune_{seed}",
            mode="tune",
            test_acc1=acc,
            peak_gb=8.0,
            activations_mb=600.0,
            iter_time_s=0.55,
        )
    write_run(tmp_path, "broken", mode="tune", status="diverged", test_acc1=None)
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    train_row = next(line for line in lines if "| train |" in line)
    tune_row = next(line for line in lines if "| tune |" in line)
    savings = next(line for line in lines if "tune vs train" in line)
    assert f"{statistics.mean(train_acc):.2f} ± {statistics.stdev(train_acc):.2f}" in train_row
    assert f"{statistics.mean(tune_acc):.2f} ± {statistics.stdev(tune_acc):.2f}" in tune_row
    assert train_row.startswith("| CUB-200 | resnet50 | 448 | 100 |") and train_row.endswith("| 3 |")
    cells = [c.strip() for c in savings.strip("|").split("|")]
    assert cells[5] == f"{statistics.mean(tune_acc) - statistics.mean(train_acc):+.2f}"
    assert cells[6:9] == ["+20.0%", "+40.0%", "-10.0%"]  # memory saved, activations saved, 10 % slower
    assert "broken: status diverged" in result.stdout


def test_no_completed_run_is_an_error(tmp_path):
    write_run(tmp_path, "a", status="interrupted")
    result = run(tmp_path)
    assert result.returncode == 1 and "no completed run" in result.stderr
    result = run(tmp_path / "missing")
    assert result.returncode == 1 and "neither a run directory" in result.stderr
