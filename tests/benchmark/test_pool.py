"""tllib_tune.benchmark.pool and `tllib-tune pool`: runs read back from their results.csv, pooled
iteration by iteration, each target's spread over the runs, and the runs that cannot be pooled."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tllib_tune.benchmark import BenchmarkSettings, Result, rows_for
from tllib_tune.benchmark.cli import pool_main
from tllib_tune.benchmark.pool import format_run_spread, pool_rows, read_rows
from tllib_tune.benchmark.report import write_csv
from tllib_tune.benchmark.stats import ratio_interval
from tllib_tune.utils.memory import MIB

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = BenchmarkSettings(arch="resnet18", modes=["eval", "tune", "deploy"], device="cpu")


def _run(tune_times, deploy_times, *, batch=2, tune_bytes=100 * MIB, settings=SETTINGS):
    """The rows of a run at one setting: eval, tune and deploy with the given iteration times."""
    results = [
        Result(
            "eval", batch, 32, times=[2.0] * len(deploy_times), activation_bytes=200 * MIB, page_faults=[7]
        ),
        Result("tune", batch, 32, times=list(tune_times), activation_bytes=tune_bytes, page_faults=[5]),
        Result("deploy", batch, 32, times=list(deploy_times), activation_bytes=100 * MIB, page_faults=[9]),
    ]
    return rows_for(results, settings)


def _written(tmp_path, name, rows):
    write_csv(rows, str(tmp_path / name / "results.csv"))
    return str(tmp_path / name)


def test_a_run_reads_back_as_the_rows_it_was_written_from(tmp_path):
    rows = _run([1.1, 1.3, 1.2], [1.0, 1.0, 1.1])
    back = read_rows(_written(tmp_path, "a", rows))
    assert back == rows  # every column, the ratios and each timed iteration (written to 4 decimals)
    assert read_rows(str(tmp_path / "a" / "results.csv")) == rows


def test_pooled_rows_hold_every_iteration_and_the_ratios_of_the_pooled_medians():
    run_a, run_b = _run([1.0, 1.2, 1.4], [1.0, 1.1, 1.2]), _run([1.3, 1.5, 1.1], [1.2, 1.3, 1.4])
    pooled, left_out = pool_rows([run_a, run_b])
    assert left_out == []
    tune = next(r for r in pooled if r["mode"] == "tune")
    assert tune["times"] == [1.0, 1.2, 1.4, 1.3, 1.5, 1.1]
    assert tune["median_s"] == statistics.median(tune["times"]) and tune["min_s"] == 1.0
    deploy_median = statistics.median([1.0, 1.1, 1.2, 1.2, 1.3, 1.4])
    assert tune["time_vs_deploy"] == pytest.approx(tune["median_s"] / deploy_median)
    assert tune["memory_vs_eval"] == 0.5 and tune["page_faults"] == 5
    # one run's ratio is not the pooled one: 1.2 / 1.1 and 1.3 / 1.3 against 1.25 / 1.2
    assert [r["time_vs_deploy"] for r in (run_a[1], run_b[1])] == pytest.approx([1.2 / 1.1, 1.0])
    # the pooled interval is that of all iterations together
    spread = ratio_interval(tune["times"], [1.0, 1.1, 1.2, 1.2, 1.3, 1.4])
    assert spread[0] <= tune["time_vs_deploy"] <= spread[1]


def test_a_mode_or_setting_only_some_runs_hold_is_left_out_and_named():
    run_a = _run([1.0], [1.0]) + _run([2.0], [2.0], batch=4)
    run_b = [r for r in _run([1.2], [1.0]) if r["mode"] != "eval"]
    pooled, left_out = pool_rows([run_a, run_b])
    assert [(r["batch_size"], r["mode"]) for r in pooled] == [(2, "tune"), (2, "deploy")]
    assert left_out == ["deploy at 4 x 32", "eval at 2 x 32", "eval at 4 x 32", "tune at 4 x 32"]
    assert pooled[0]["time_vs_eval"] is None and pooled[0]["time_vs_deploy"] == pytest.approx(1.1)


def test_runs_of_other_settings_or_other_code_are_refused_by_name():
    other_arch = BenchmarkSettings(arch="resnet50", modes=["eval", "tune", "deploy"], device="cpu")
    with pytest.raises(
        ValueError, match=r"b measured arch='resnet50', a arch='resnet18': pool only runs of one"
    ):
        pool_rows([_run([1.0], [1.0]), _run([1.0], [1.0], settings=other_arch)], ["a", "b"])
    with pytest.raises(
        ValueError, match=r"tune at 2 x 32 kept 100.000 MiB in a and 101.000 in b: .* one commit"
    ):
        pool_rows([_run([1.0], [1.0]), _run([1.0], [1.0], tune_bytes=101 * MIB)], ["a", "b"])
    with pytest.raises(ValueError, match="at least one run"):
        pool_rows([])


def test_the_spread_over_runs_gives_each_targets_lowest_and_highest_ratio():
    runs = [_run([1.02], [1.0]), _run([1.10], [1.0]), _run([0.99], [1.0])]
    pooled, _ = pool_rows(runs)
    lines = format_run_spread(runs, pooled).splitlines()
    assert lines[0].split() == ["target", "2", "x", "32"]
    by_label = {line.split("<=")[0].strip(): line.split()[-2:] for line in lines[1:]}
    assert by_label["time tune/deploy"] == ["0.990-1.100", "2/3"]
    assert by_label["memory tune/eval"] == ["0.500-0.500", "3/3"]  # at the limit is within it


def test_pool_command_prints_the_pooled_targets_and_the_spread_and_writes_csv(tmp_path, capsys):
    a = _written(tmp_path, "a", _run([1.02, 1.04], [1.0, 1.0]))
    b = _written(tmp_path, "b", _run([1.10, 1.06], [1.0, 1.0]))
    assert pool_main([a, b, "--out", str(tmp_path / "pooled")], prog="tllib-tune pool") == 0
    out = capsys.readouterr().out
    assert f"2 runs pooled: {a}, {b}" in out and "median of 4 iterations a mode" in out
    assert "\npooled:\n" in out and "90% interval" in out and "\neach run:\n" in out
    with open(tmp_path / "pooled" / "results.csv") as f:
        tune = next(r for r in csv.DictReader(f) if r["mode"] == "tune")
    assert tune["times_s"] == "1.0200 1.0400 1.1000 1.0600" and float(
        tune["time_vs_deploy"]
    ) == pytest.approx(1.05)


def test_pool_command_notes_runs_timed_with_the_passive_wait_policy(tmp_path, capsys):
    passive = _run([1.02, 1.04], [1.0, 1.0])
    for row in passive:
        row["threads"], row["environment"] = 2, "OMP_WAIT_POLICY=PASSIVE"
    assert pool_main([_written(tmp_path, "passive", passive)]) == 0
    assert "note: OMP_WAIT_POLICY=PASSIVE" in capsys.readouterr().out
    default = _run([1.02, 1.04], [1.0, 1.0])
    for row in default:
        row["threads"], row["environment"] = 2, "default OpenMP and allocator settings"
    assert pool_main([_written(tmp_path, "default", default)]) == 0
    assert "OMP_WAIT_POLICY" not in capsys.readouterr().out


def test_pool_command_names_a_run_it_cannot_read_and_exits_2(tmp_path, capsys):
    assert pool_main([str(tmp_path / "missing")], prog="tllib-tune pool") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tllib-tune pool: error: {tmp_path / 'missing'}: no results.csv there;")
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.csv").write_text("arch,device,mode,median_s\nresnet18,cpu,tune,1.0\n")
    assert pool_main([str(old)], prog="tllib-tune pool") == 2
    err = capsys.readouterr().err
    assert "no times_s column" in err and "rerun the benchmark" in err and "Traceback" not in err


def test_the_script_is_the_pool_command(tmp_path):
    run = _written(tmp_path, "a", _run([1.0], [1.0]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = [sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py")]
    done = subprocess.run([*script, run], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 run pooled" in done.stdout, done.stderr
    done = subprocess.run([*script, "--out"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pool_benchmarks.py: error:" in done.stderr


def test_runs_with_other_threads_or_environment_are_refused_and_unrecorded_ones_pass(tmp_path):
    run_a, run_b = _run([1.0], [1.0]), _run([1.0], [1.0])
    assert run_a[0]["threads"] == torch.get_num_threads() and run_a[0]["environment"]
    for row in run_b:
        row["environment"] = "MALLOC_MMAP_THRESHOLD_=4294967296"
    with pytest.raises(ValueError, match=r"b measured environment='MALLOC_MMAP_THRESHOLD_=4294967296', a "):
        pool_rows([run_a, run_b], ["a", "b"])
    # a results.csv from before the two columns existed: read as not recorded, pooled with anything
    path = tmp_path / "old" / "results.csv"
    write_csv(run_b, str(path))
    with open(path, newline="") as f:
        lines = [
            {k: v for k, v in line.items() if k not in ("threads", "environment")}
            for line in csv.DictReader(f)
        ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    old = read_rows(str(path.parent))
    assert old[0]["threads"] is None and old[0]["environment"] is None
    assert len(pool_rows([run_a, old])[0]) == 3
