"""tllib_tune.benchmark through scripts/benchmark_modes.py: a tiny run writes a complete CSV and prints the
targets; mode order, keep-folded, page-fault notes, the batch-statistics check (the targets themselves:
test_targets.py)."""

from __future__ import annotations

import collections
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import randomize_bn_, rel_err
from tllib_tune import ConvBN
from tllib_tune.benchmark import (
    IterationBenchmark,
    fault_notes,
    keep_folded_forward,
    timing_order,
    wait_policy_note,
)
from tllib_tune.benchmark.cli import parse_args, settings_from
from tllib_tune.models import get_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark_modes.py"
EXPECTED_COLUMNS = {
    "arch", "device", "amp", "channels_last", "batch_size", "input_size", "mode", "median_s", "min_s",
    "activation_mb", "peak_mb", "time_vs_eval", "time_vs_deploy", "memory_vs_eval", "memory_vs_deploy",
    "page_faults", "peak_saved_mb", "compile_s", "time_vs_tune", "note", "times_s", "threads", "environment",
}  # fmt: skip
MODES = {"train", "eval", "tune", "deploy", "inplace-abn"}


def _run(*args, **extra_env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _bench(argv):
    return IterationBenchmark(settings_from(parse_args(argv)))


def test_tiny_run_writes_csv_plot_tensorboard_report_log_and_table(tmp_path):
    out = tmp_path / "bench"
    proc = _run(
        "--arch", "resnet18", "--batch-sizes", "2,3", "--input-sizes", "32", "--repeats", "2",
        "--warmup", "0", "--device", "cpu", "--out", str(out), TLLIB_TUNE_PROGRESS_INTERVAL="0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.txt").read_text()
    assert "environment: " in report and "target " in report and report.strip() in proc.stdout
    log = (out / "log.txt").read_text().splitlines()  # a plain progress line per iteration here
    assert log and all(line.startswith("resnet18 on cpu: iter ") for line in log) and "20/20" in log[-1]
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert set(reader.fieldnames) == EXPECTED_COLUMNS
        rows = list(reader)
    assert {r["mode"] for r in rows} == MODES
    assert {(r["batch_size"], r["input_size"]) for r in rows} == {("2", "32"), ("3", "32")}
    by_mode = {(r["mode"], r["batch_size"]): r for r in rows}
    for bs in ("2", "3"):
        assert float(by_mode[("eval", bs)]["time_vs_eval"]) == 1.0
        tune, deploy, eval_ = (float(by_mode[(m, bs)]["activation_mb"]) for m in ("tune", "deploy", "eval"))
        assert tune <= 1.01 * deploy and tune < eval_
    for r in rows:
        assert float(r["median_s"]) > 0 and float(r["min_s"]) <= float(r["median_s"])
        times = [float(t) for t in r["times_s"].split()]  # each timed iteration, for pooling runs later
        assert len(times) == 2 and min(times) == pytest.approx(float(r["min_s"]), abs=1e-4)
        assert int(r["threads"]) >= 1 and r["environment"]  # what runs to be pooled must share
        if sys.platform != "win32":  # the OS counts them: a whole number per iteration
            assert int(r["page_faults"]) >= 0
    assert (out / "benchmark.png").stat().st_size > 0
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert "tune" in proc.stdout and "time/eval" in proc.stdout and "faults/iter" in proc.stdout
    assert "environment: " in proc.stdout
    targets = proc.stdout[proc.stdout.index("target ") :].splitlines()
    labels = [line.split("<=")[0].strip() if "<=" in line else " ".join(line.split()[:2]) for line in targets]
    assert labels[1:7] == [
        "memory tune/deploy", "memory tune/eval", "time tune/eval", "90% interval,", "time tune/deploy",
        "90% interval,",
    ]  # fmt: skip
    assert targets[1].rstrip().endswith("yes")  # Tune's activation memory is Deploy's to the byte


def test_bad_arguments_exit_non_zero_with_a_message(tmp_path):
    proc = _run("--modes", "tune,fast", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "fast" in proc.stderr and "inplace-abn" in proc.stderr
    proc = _run("--arch", "resnet5", "--out", str(tmp_path))
    assert proc.returncode == 2 and "resnet5" in proc.stderr
    for flags, fragment in [
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--num-classes", "0"], "--num-classes must be >= 1, got 0"),
    ]:
        proc = _run(*flags, "--out", str(tmp_path))
        assert proc.returncode == 2 and fragment in proc.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = _run(
        "--arch", "resnet18", "--modes", "tune", "--batch-sizes", "2", "--input-sizes", "32",
        "--device", "cpu", "--out", str(blocker / "bench"),
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--out {blocker / 'bench'}" in proc.stderr and "choose a writable directory" in proc.stderr


def test_a_batch_of_one_1x1_map_fails_before_timing_in_batch_statistics_modes(tmp_path):
    # resnet18's last feature map is 1 x 1 at 32 pixels: BatchNorm with batch statistics cannot run on it
    proc = _run(
        "--arch", "resnet18", "--batch-sizes", "2,1", "--input-sizes", "64,32", "--modes", "train,tune",
        "--device", "cpu", "--out", str(tmp_path / "bench"),
    )  # fmt: skip
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("benchmark_modes.py: error: --batch-sizes 1 at --input-sizes 32:"), line
    assert "(train mode)" in line and "holds 1 per image" in line and "out of --modes" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bench").exists()  # refused before the output directory is made

    argv = ["--arch", "resnet18", "--device", "cpu"]
    bench = _bench(argv + ["--modes", "tune,deploy"])
    assert bench.batch_statistics_problem([1], [32, 64]) is None  # running statistics only
    bench = _bench(argv + ["--modes", "eval,inplace-abn"])
    assert bench.batch_statistics_problem([1], [64]) is None  # a 2 x 2 map: 4 values per channel
    problem = bench.batch_statistics_problem([2, 1], [64, 32])  # 2 x 32 passes, 1 x 32 does not
    assert problem.startswith("`batch_size` 1 at `input_size` 32: ") and "(inplace-abn mode)" in problem


def test_timed_repeats_run_in_the_balanced_order(monkeypatch):
    modes = ["train", "tune", "deploy"]
    runner = _bench(
        [
            "--arch",
            "resnet18",
            "--modes",
            ",".join(modes),
            "--repeats",
            "3",
            "--warmup",
            "0",
            "--device",
            "cpu",
        ]
    )
    timed = []

    def fake_iteration(mode, x, y, meter=None, step_meter=None):
        if meter is None and step_meter is None:  # the memory passes measure with meters; not recorded
            timed.append(mode)
        return 1.0

    monkeypatch.setattr(runner, "iteration", fake_iteration)

    class Progress:
        def update(self, n):
            pass

    runner.measure(2, 32, Progress())
    assert timed == ["train", "tune", "deploy", "tune", "deploy", "train", "deploy", "train", "tune"]
    assert timed == timing_order(modes, 3)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 9])
def test_timing_order_balances_places_and_predecessors(count):
    modes = [f"m{i}" for i in range(count)]
    cycle = count * (2 if count % 2 else 1)
    order = timing_order(modes, 2 * cycle)
    rounds = [order[i : i + count] for i in range(0, len(order), count)]
    assert len(rounds) == 2 * cycle and all(sorted(r) == modes for r in rounds)  # every mode once a round
    places = collections.Counter((mode, place) for r in rounds for place, mode in enumerate(r))
    assert set(places.values()) == {2 * cycle // count}  # every mode in every place equally often
    after = collections.Counter(pair for r in rounds for pair in zip(r, r[1:]))
    if count > 1:  # every ordered pair of different modes, equally often; no mode after itself in a round
        assert len(after) == count * (count - 1) and len(set(after.values())) == 1
    # plain alternation (ABC CBA) fails this: the middle mode never follows itself, the end ones do
    assert all(a != b for a, b in after)
    assert timing_order(["a", "b"], 4) == ["a", "b", "b", "a", "a", "b", "b", "a"]  # ABBA
    assert timing_order([], 3) == []


def test_keep_folded_mode_keeps_one_folded_weight_per_block(tmp_path):
    """The comparison mode computes the block like PyTorch's pass and MMCV do: its activation memory is
    Tune's plus every block's folded weight (and a few per-channel vectors)."""
    out = tmp_path / "bench"
    proc = _run(
        "--arch", "resnet18", "--batch-sizes", "2", "--input-sizes", "32",
        "--modes", "tune,keep-folded,deploy", "--repeats", "1", "--warmup", "0", "--device", "cpu",
        "--no-plot", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv") as f:
        memory = {r["mode"]: float(r["activation_mb"]) for r in csv.DictReader(f)}
    backbone = get_model("resnet18", pretrained=False)
    weights_mb = sum(b.conv.weight.numel() * 4 for b in backbone.modules() if isinstance(b, ConvBN)) / 2**20
    assert memory["tune"] == memory["deploy"]
    assert weights_mb <= memory["keep-folded"] - memory["tune"] <= 1.01 * weights_mb


@pytest.mark.parametrize("bias", [False, True])
def test_keep_folded_forward_is_the_blocks_eval_function(bias):
    gen = torch.Generator().manual_seed(3)
    block = ConvBN(4, 6, 3, stride=2, bias=bias, mode="eval").double()
    randomize_bn_(block.bn, gen)
    x = torch.randn(2, 4, 9, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 6, 5, 5, generator=gen, dtype=torch.float64)
    grads = []
    for forward in (block, lambda t: keep_folded_forward(block, t)):
        out = forward(x)
        params = [x, block.conv.weight, block.bn.weight, block.bn.bias]
        grads.append((out, *torch.autograd.grad(out, params, upstream)))
    for eval_value, keep_folded_value in zip(*grads):
        assert rel_err(keep_folded_value, eval_value) < 1e-12


def test_wait_policy_note_only_for_tune_timed_passive_on_several_cpu_threads():

    def row(mode="tune", device="cpu", threads=2, environment="OMP_WAIT_POLICY=PASSIVE, MALLOC_TOP_PAD_=1"):
        return {"mode": mode, "device": device, "threads": threads, "environment": environment}

    note = wait_policy_note([row(), row("deploy")])
    assert note is not None and "OMP_WAIT_POLICY=PASSIVE" in note and "OpenMP's wait policy" in note
    assert wait_policy_note([row("compiled-tune", environment="omp_wait_policy=passive")]) is not None
    assert wait_policy_note([row(environment="default OpenMP and allocator settings")]) is None
    assert wait_policy_note([row(environment="OMP_WAIT_POLICY=ACTIVE")]) is None
    assert wait_policy_note([row(environment=None)]) is None  # a run from before the column
    assert wait_policy_note([row(threads=1)]) is None  # one thread: nothing to wake
    assert wait_policy_note([row(device="cuda:0")]) is None
    assert wait_policy_note([row("deploy"), row("eval")]) is None  # no tune row to misread


def test_fault_notes_flag_settings_where_tune_and_deploy_faulted_apart():

    def row(mode, batch, faults, activation_mb=100.0):
        return {"mode": mode, "batch_size": batch, "input_size": 224, "page_faults": faults,
                "activation_mb": activation_mb}  # fmt: skip

    consistent = [row("tune", 16, 62_694), row("deploy", 16, 62_692), row("eval", 16, 446_841)]
    assert fault_notes(consistent) is None
    assert fault_notes([row("tune", 8, 0), row("deploy", 8, 5_000)]) is None  # below floor
    # the run where Tune took 1.08 M faults against Deploy's 0.69 M at 32 x 224
    notes = fault_notes(consistent + [row("tune", 32, 1_078_605), row("deploy", 32, 689_787)])
    assert notes is not None and "32 x 224" in notes and "16 x 224" not in notes
    assert "1078605 and 689787" in notes and "MALLOC_TRIM_THRESHOLD_" in notes
    # under autocast Deploy keeps more (its low-precision weight copies): fault counts may differ
    amp = [row("tune", 8, 11_942, 42.4), row("deploy", 8, 40_000, 87.1)]
    assert fault_notes(amp) is None
    assert fault_notes([row("tune", 8, None), row("deploy", 8, None)]) is None
