"""tllib_tune.finetune end to end through examples/finetune.py: every mode logs every tag, eval == tune,
exact resume, torchrun, the quick start.

Runs are tiny (resnet18 at 32 px, batch 4, a few steps) on the session's synthetic set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tllib_tune.finetune import cli, runner
from tllib_tune.finetune.cli import parse_config

from .conftest import FINETUNE, REPO, run_finetune, subprocess_env, tiny_args

TAGS = [
    "train/loss",
    "train/acc1",
    "train/lr",
    "perf/iter_time_s",
    "perf/data_time_s",
    "perf/images_per_s",
    "memory/activations_mb",
    "memory/peak_gb",
    "val/loss",
    "val/acc1",
]
HPARAM_TAGS = ["hparam/acc1", "hparam/iter_time_s", "hparam/activations_mb", "hparam/peak_gb"]


MODES = ["train", "eval", "tune", "deploy", "inplace-abn"]


def scalars(log: Path, tag: str, sub: str = "") -> list:
    acc = EventAccumulator(str(log / "tb" / sub) if sub else str(log / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


# ----------------------------------------------------------------------------------------------------------
# Every mode, every tag; eval and tune give the same curve
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mode_runs(synthetic_root, backbone_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("modes")
    runs = {}
    for mode in MODES:
        log = base / mode
        result = run_finetune(tiny_args(synthetic_root, log, backbone_file, mode=mode, epochs=2, seed=3))
        runs[mode] = (result, log)
    return runs


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_logs_every_tag(mode_runs, mode):
    result, log = mode_runs[mode]
    assert_ok(result)
    acc = EventAccumulator(str(log / "tb"))
    acc.Reload()
    assert set(TAGS) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]  # global steps, 2 epochs x 2
    assert [e.step for e in acc.Scalars("val/acc1")] == [2, 4]
    hparams = EventAccumulator(str(log / "tb" / "hparams"))
    hparams.Reload()
    assert set(HPARAM_TAGS) <= set(hparams.Tags()["scalars"])

    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and {r["mode"] for r in records} == {mode}
    summary = json.loads((log / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["test_acc1"] == pytest.approx(records[-1]["test_acc1"])
    assert summary["test_acc1"] == pytest.approx(scalars(log, "val/acc1")[-1][1], rel=1e-6)
    assert summary["chance_acc1"] == pytest.approx(5.0)
    assert summary["activations_mb"] > 0 and summary["iter_time_s"] > 0
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and checkpoint["iteration"] == 0
    if mode == "inplace-abn":  # the 9 ConvBN + ReLU pairs of resnet18 are converted, the rest train
        assert checkpoint["modes"]["counts"] == {"inplace-abn": 9, "train": 11}
    else:
        assert checkpoint["modes"]["counts"] == {mode: 20}  # resnet18: 20 ConvBN blocks, all in the mode
    assert not (log / "checkpoints" / "best.pt").exists()  # no --val-ratio: no model selection
    assert f"final test acc1 {summary['test_acc1']:.2f}%" in result.stdout


def test_eval_and_tune_give_the_same_loss_curve(mode_runs):
    for mode in ("train", "eval", "tune"):
        assert_ok(mode_runs[mode][0])
    curve = {
        m: torch.tensor([v for _, v in scalars(mode_runs[m][1], "train/loss")])
        for m in ("train", "eval", "tune")
    }
    val = {m: torch.tensor([v for _, v in scalars(mode_runs[m][1], "val/loss")]) for m in ("eval", "tune")}
    assert torch.allclose(curve["tune"], curve["eval"], rtol=1e-4, atol=0), (curve["tune"], curve["eval"])
    assert torch.allclose(val["tune"], val["eval"], rtol=1e-4, atol=0)
    assert not torch.allclose(
        curve["train"], curve["eval"], rtol=1e-4, atol=0
    )  # the check can tell modes apart


def test_tune_keeps_less_for_backward_than_eval(mode_runs):
    memory = {
        m: json.loads((mode_runs[m][1] / "summary.json").read_text())["activations_mb"]
        for m in ("eval", "tune", "deploy")
    }
    assert memory["tune"] < 0.8 * memory["eval"]
    assert memory["tune"] == pytest.approx(memory["deploy"], rel=0.01)


# ----------------------------------------------------------------------------------------------------------
# Validation split and model selection
# ----------------------------------------------------------------------------------------------------------
def test_val_ratio_selects_on_val_and_reports_test(synthetic_root, backbone_file, tmp_path):
    log = tmp_path / "val"
    result = run_finetune(tiny_args(synthetic_root, log, backbone_file, epochs=2, val_ratio=0.25))
    assert_ok(result)
    summary = json.loads((log / "summary.json").read_text())
    assert (summary["train_size"], summary["val_size"], summary["test_size"]) == (300, 100, 400)
    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert all("val_acc1" in r and "test_acc1" not in r for r in records)  # no test figure during training
    best_epoch = max(range(2), key=lambda e: (records[e]["val_acc1"], -e))
    assert summary["best_epoch"] == best_epoch and summary["best_val_acc1"] == pytest.approx(
        records[best_epoch]["val_acc1"]
    )
    assert torch.load(log / "checkpoints" / "best.pt", weights_only=False)["epoch"] == best_epoch + 1
    assert "best_test_acc1" in summary and "test_acc1" in summary

    test = run_finetune(tiny_args(synthetic_root, log, backbone_file, phase="test"))
    assert_ok(test)
    assert f"test: acc1 {summary['best_test_acc1']:.2f}" in test.stdout
    # the checkpoint holds every weight: --pretrained imagenet fetches nothing (an empty, offline hub)
    hub = subprocess_env(TORCH_HOME=str(tmp_path / "empty_torch_home"))
    test = run_finetune(tiny_args(synthetic_root, log, "imagenet", phase="test"), env=hub)
    assert_ok(test)
    assert f"test: acc1 {summary['best_test_acc1']:.2f}" in test.stdout
    assert "Downloading" not in test.stderr and not (tmp_path / "empty_torch_home").exists()


# ----------------------------------------------------------------------------------------------------------
# Interrupt and resume
# ----------------------------------------------------------------------------------------------------------
RESUME = {"epochs": 2, "iters_per_epoch": 8, "seed": 1, "mode_schedule": "train:0-1,tune:1-2"}


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, backbone_file, tmp_path_factory):
    log = tmp_path_factory.mktemp("resume") / "reference"
    result = run_finetune(tiny_args(synthetic_root, log, backbone_file, **RESUME))
    assert_ok(result)
    return model_state(log / "checkpoints" / "latest.pt")


def assert_same_weights(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_sigint_saves_latest_and_resume_matches(synthetic_root, backbone_file, uninterrupted, tmp_path):
    log = tmp_path / "run"
    args = tiny_args(synthetic_root, log, backbone_file, **RESUME)
    proc = subprocess.Popen(
        [sys.executable, str(FINETUNE), *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (log / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "SIGINT received" in err and "Traceback" not in err
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and 0 <= checkpoint["iteration"] <= 8
    assert json.loads((log / "summary.json").read_text())["status"] == "interrupted"
    assert "--resume" in out

    resumed = run_finetune(args + ["--resume", str(log / "checkpoints" / "latest.pt")])
    assert_ok(resumed)
    assert_same_weights(model_state(log / "checkpoints" / "latest.pt"), uninterrupted)
    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [s for s, _ in scalars(log, "train/loss")] == list(range(1, 17))  # no step logged twice


def test_sigterm_mid_epoch_then_resume_matches(
    synthetic_root, backbone_file, uninterrupted, tmp_path, monkeypatch
):
    real = runner.train_one_epoch

    def signal_at_step_3_of_epoch_1(*args, **kwargs):
        on_step = kwargs["on_step"]

        def hook(step, values):
            on_step(step, values)
            if kwargs["epoch"] == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        kwargs["on_step"] = hook
        return real(*args, **kwargs)

    log = tmp_path / "run"
    args = tiny_args(synthetic_root, log, backbone_file, **RESUME)
    monkeypatch.setattr(runner, "train_one_epoch", signal_at_step_3_of_epoch_1)
    assert cli.main(args, prog="finetune.py") == 128 + signal.SIGTERM
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (1, 5)  # the flag is read in the next step
    assert checkpoint["modes"]["counts"] == {"tune": 20}
    assert checkpoint["partial"]["iterations"] == 5

    monkeypatch.setattr(runner, "train_one_epoch", real)
    assert cli.main(args + ["--resume", str(log / "checkpoints" / "latest.pt")], prog="finetune.py") == 0
    assert_same_weights(model_state(log / "checkpoints" / "latest.pt"), uninterrupted)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


# ----------------------------------------------------------------------------------------------------------
# torchrun, quick start
# ----------------------------------------------------------------------------------------------------------
def test_torchrun_two_processes_on_cpu(synthetic_root, backbone_file, tmp_path):
    log = tmp_path / "ddp"
    result = run_finetune(
        tiny_args(synthetic_root, log, backbone_file, epochs=2, mode="tune"),
        cmd=[
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--",
            str(FINETUNE),
        ],
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    assert_ok(result)
    assert result.stdout.count("run directory:") == 1
    assert result.stdout.count("final test acc1") == 1
    assert len((log / "metrics.jsonl").read_text().splitlines()) == 2
    events = [p for p in (log / "tb").glob("events.out.tfevents.*")]
    assert len(events) == 1
    summary = json.loads((log / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert summary["test_size"] == 400  # the shards add up to the whole test split
    assert len(scalars(log, "train/loss")) == 4


def test_quick_start_defaults_and_overrides():
    config = parse_config(["--quick-start"])
    assert (config.dataset, config.pretrained, config.arch) == ("synthetic", "none", "resnet18")
    assert config.input_size < 224 and config.root == os.path.join("data", "synthetic-quickstart")
    assert config.reader_options == {"images_per_class": 100} and config.quick_start
    config = parse_config(["--quick-start", "--epochs", "1", "--mode-schedule", "tune:0-1"])
    assert config.epochs == 1 and config.schedule == [("tune", 0, 1)] and config.dataset == "synthetic"
    config = parse_config(["--quick-start", "--mode", "eval"])  # an explicit mode replaces the schedule
    assert config.mode_schedule is None and config.schedule == [("eval", 0, config.epochs)]
    assert parse_config([]).pretrained == "imagenet"  # no opt-in: ImageNet weights, never random
    # the quick start's data options are the synthetic set's only
    assert parse_config(["--quick-start", "-d", "cub200"]).reader_options == {}


def test_quick_start_says_what_it_does(synthetic_root, tmp_path, capsys):
    log = str(tmp_path / "q")
    tiny = "--epochs 1 -i 1 --input-size 32 -b 4 --mode-schedule train:0-1 -j 0".split()
    flags = ["--quick-start", "--root", str(synthetic_root), "--log", log, *tiny]
    config = dataclasses.replace(parse_config(flags), dataset_options={})  # the session's smaller set
    final = runner.Runner(config).run()
    out = capsys.readouterr().out
    assert "Quick start (offline): a synthetic fine-grained data set" in out
    assert "random initialisation (`pretrained` none, no download)" in out  # the library's own terms
    assert f"final test acc1 {final['test_acc1']:.2f}%" in out
