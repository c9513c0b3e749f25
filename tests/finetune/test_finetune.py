"""tllib_tune.finetune end to end through examples/finetune.py: every mode logs every tag (epochs numbered
from 1), eval == tune, plain progress lines without a terminal, exact resume, torchrun's reduced loss
equals one process's, the test and analysis phases from the checkpoint's settings, a class-folder tree,
the quick start.

Runs are tiny (resnet18 at 32 px, batch 4, a few steps) on the session's synthetic set (20 classes x 5 train
+ 5 test images, conftest.SYNTHETIC_OPTIONS).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
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

from .conftest import (
    FINETUNE,
    MODES,
    REPO,
    SYNTHETIC_OPTIONS,
    assert_ok,
    curve,
    records,
    run_finetune,
    scalars,
    subprocess_env,
    summary,
    tiny_args,
)

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
#: A plain progress line of a training epoch (no terminal): step, loss, seconds per step, ETA.
PROGRESS = re.compile(
    r"^epoch (\d)/2 train: step (\d)/2 \(\d+%\), [\d.]+ s/step, ETA \w+, elapsed \w+, loss [\d.]+"
)


def model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------------------------------------
# Every mode, every tag; eval and tune give the same curve
# ----------------------------------------------------------------------------------------------------------
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

    epochs = records(log)
    assert [r["epoch"] for r in epochs] == [1, 2] and {r["mode"] for r in epochs} == {mode}  # from 1
    final = summary(log)
    assert final["status"] == "completed"
    assert final["test_acc1"] == pytest.approx(epochs[-1]["test_acc1"])
    assert final["test_acc1"] == pytest.approx(scalars(log, "val/acc1")[-1][1], rel=1e-6)
    assert final["chance_acc1"] == pytest.approx(5.0)
    assert final["activations_mb"] > 0 and final["iter_time_s"] > 0
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["iteration"] == 0 and checkpoint["version"] == 2
    if mode == "inplace-abn":  # the 9 ConvBN + ReLU pairs of resnet18 are converted, the rest train
        assert checkpoint["modes"]["counts"] == {"inplace-abn": 9, "train": 11}
    else:
        assert checkpoint["modes"]["counts"] == {mode: 20}  # resnet18: 20 ConvBN blocks, all in the mode
    assert not (log / "checkpoints" / "best.pt").exists()  # no --val-ratio: no model selection
    assert f"final test acc1 {final['test_acc1']:.2f}%" in result.stdout
    # one numbering: bars, the mode message and the epoch lines say "epoch 1/2" then "epoch 2/2"
    assert f"epoch 1/2: backbone in {mode} mode" in result.stdout
    assert re.search(r"^epoch 1/2 \[.*\n(.*\n)*epoch 2/2 \[", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("mode", ["tune", "train"])
def test_without_a_terminal_progress_is_plain_lines_also_in_log_txt(mode_runs, mode):
    result, log = mode_runs[mode]
    assert_ok(result)
    assert "\r" not in result.stderr  # no carriage-return bar into a pipe
    lines = [line for line in result.stderr.splitlines() if PROGRESS.match(line)]
    # --progress-interval 0: one line per step, epochs and steps numbered from 1
    assert [PROGRESS.match(line).groups() for line in lines] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]
    text = (log / "log.txt").read_text()
    assert all(line in text for line in lines)  # log.txt gets the same progress lines
    assert all(line in text for line in result.stdout.splitlines() if line.strip())  # and the console's


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
    final = summary(log)
    assert (final["train_size"], final["val_size"], final["test_size"]) == (75, 25, 100)
    epochs = records(log)
    assert all("val_acc1" in r and "test_acc1" not in r for r in epochs)  # no test figure during training
    best = max(range(2), key=lambda e: (epochs[e]["val_acc1"], -e))
    assert final["best_epoch"] == best + 1  # numbered from 1, as metrics.jsonl's epoch
    assert final["best_val_acc1"] == pytest.approx(epochs[best]["val_acc1"])
    assert f"best on val (epoch {best + 1})" in result.stdout
    assert torch.load(log / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best + 1  # epochs done
    assert "best_test_acc1" in final and "test_acc1" in final

    # --phase test with only --log: data set, root, arch, input size and classes come from the checkpoint;
    # its --pretrained imagenet default fetches nothing (an empty, offline hub)
    hub = subprocess_env(TORCH_HOME=str(tmp_path / "empty_torch_home"))
    test = run_finetune(["--log", str(log), "--phase", "test", "--device", "cpu", "-j", "0"], env=hub)
    assert_ok(test)
    assert f"test: acc1 {final['best_test_acc1']:.2f}" in test.stdout and "best.pt" in test.stdout
    assert "Downloading" not in test.stderr and not (tmp_path / "empty_torch_home").exists()
    assert f"test: acc1 {final['best_test_acc1']:.2f}" in (log / "log.txt").read_text()
    # an explicit flag overrides a saved setting (a smaller evaluation batch: the same figure)
    test = run_finetune(["--log", str(log), "--phase", "test", "-b", "3", "-j", "0", "--device", "cpu"])
    assert_ok(test)
    assert f"test: acc1 {final['best_test_acc1']:.2f}" in test.stdout

    # --phase analysis: per-class accuracy and the confusion summary, checked against the test figure
    analysis = run_finetune(["--log", str(log), "--phase", "analysis", "-j", "0", "--device", "cpu"])
    assert_ok(analysis)
    folder = log / "analysis"
    report = json.loads((folder / "summary.json").read_text())
    assert report["images"] == 100 and report["test_acc1"] == pytest.approx(final["best_test_acc1"])
    rows = (folder / "per_class.csv").read_text().splitlines()
    assert rows[0].startswith("label,class,images,correct,acc1") and len(rows) == 21
    per_class = [row.split(",") for row in rows[1:]]
    assert sum(int(r[2]) for r in per_class) == 100 and all(int(r[2]) == 5 for r in per_class)
    correct = sum(int(r[3]) for r in per_class)
    assert 100 * correct / 100 == pytest.approx(final["best_test_acc1"])
    matrix = [line.split(",") for line in (folder / "confusion.csv").read_text().splitlines()[1:]]
    assert sum(int(matrix[i][i + 1]) for i in range(20)) == correct  # the diagonal
    assert sum(int(v) for row in matrix for v in row[1:]) == 100
    mean = sum(float(r[4]) for r in per_class) / 20
    assert report["mean_class_acc1"] == pytest.approx(mean) and "mean per-class acc1" in analysis.stdout


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
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and 0 <= checkpoint["iteration"] <= 8
    assert summary(log)["status"] == "interrupted"
    assert "--resume" in out

    resumed = run_finetune(args + ["--resume", str(log / "checkpoints" / "latest.pt")])
    assert_ok(resumed)
    assert_same_weights(model_state(log / "checkpoints" / "latest.pt"), uninterrupted)
    assert [r["epoch"] for r in records(log)] == [1, 2]
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
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (1, 5)  # the flag is read in the next step
    assert checkpoint["modes"]["counts"] == {"tune": 20}
    assert checkpoint["partial"]["iterations"] == 5

    monkeypatch.setattr(runner, "train_one_epoch", real)
    assert cli.main(args + ["--resume", str(log / "checkpoints" / "latest.pt")], prog="finetune.py") == 0
    assert_same_weights(model_state(log / "checkpoints" / "latest.pt"), uninterrupted)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


# The wrapper runs finetune.py with one more hook that, after global step PAUSE_AT, says so and waits to
# be killed: the SIGKILL lands between steps at a known point, whatever the machine's speed.
_PAUSE_WRAPPER = """
import runpy, sys, time
from tllib_tune.finetune import Hook, runner
pause_at = int(sys.argv[1])
class Pause(Hook):
    def after_step(self, epoch, step, values):
        if epoch * self.runner.config.iters_per_epoch + step + 1 == pause_at:
            print("PAUSED", flush=True)
            time.sleep(600)
init = runner.Runner.__init__
def with_pause(self, *args, **kwargs):
    init(self, *args, hooks=[Pause()], **kwargs)
runner.Runner.__init__ = with_pause
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_save_every_then_sigkill_then_resume_matches(synthetic_root, backbone_file, uninterrupted, tmp_path):
    log = tmp_path / "run"
    args = tiny_args(synthetic_root, log, backbone_file, save_every=3, **RESUME)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PAUSE_WRAPPER, "11", str(FINETUNE), *args],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "PAUSED":
                break
        proc.send_signal(signal.SIGKILL)  # no handler, no save: only the step-9 latest.pt is left
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoint = torch.load(log / "checkpoints" / "latest.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (1, 1)  # global step 9 = epoch 2, step 1 done
    assert checkpoint["partial"]["iterations"] == 1 and checkpoint["modes"]["counts"] == {"tune": 20}
    assert summary(log)["status"] == "running"  # killed: nothing could say otherwise

    resumed = run_finetune(args + ["--resume", str(log / "checkpoints" / "latest.pt")])
    assert_ok(resumed)
    assert "epoch 2/2 from step 2/8" in resumed.stdout  # where it carries on, numbered from 1
    assert_same_weights(model_state(log / "checkpoints" / "latest.pt"), uninterrupted)
    assert [r["epoch"] for r in records(log)] == [1, 2]
    assert [s for s, _ in scalars(log, "train/loss")] == list(range(1, 17))  # steps 10-11 not twice


# ----------------------------------------------------------------------------------------------------------
# torchrun, a class-folder tree, quick start
# ----------------------------------------------------------------------------------------------------------
def test_torchrun_loss_is_every_ranks_and_equals_one_process(synthetic_root, backbone_file, tmp_path):
    """2 processes x batch 4 see the same global batches as 1 process x batch 8 (tune mode: no batch
    statistics), so the logged training loss, accuracy and evaluation must agree."""
    flags = dict(epochs=2, iters_per_epoch=3, mode="tune")
    log, single = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--"]
    result = run_finetune(
        tiny_args(synthetic_root, log, backbone_file, **flags),
        cmd=[*torchrun, str(FINETUNE)],
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    assert_ok(result)
    reference = run_finetune(tiny_args(synthetic_root, single, backbone_file, batch_size=8, **flags))
    assert_ok(reference)
    assert result.stdout.count("run directory:") == 1 and result.stdout.count("final test acc1") == 1
    assert result.stdout.count("epoch 1/2: backbone in tune mode") == 1  # every notice once
    assert len(list((log / "tb").glob("events.out.tfevents.*"))) == 1
    final = summary(log)
    assert final["world_size"] == 2 and final["status"] == "completed"
    assert final["test_size"] == 100  # the shards add up to the whole test split
    for tag in ("train/loss", "train/acc1", "val/loss"):
        assert torch.allclose(curve(log, tag), curve(single, tag), rtol=1e-5, atol=1e-6), tag
    ddp, one = records(log), records(single)
    assert [r["train_loss"] for r in ddp] == pytest.approx([r["train_loss"] for r in one], rel=1e-5)
    assert [r["train_acc1"] for r in ddp] == pytest.approx([r["train_acc1"] for r in one])
    assert final["test_acc1"] == pytest.approx(summary(single)["test_acc1"])


def test_a_class_folder_tree_fine_tunes(synthetic_root, tmp_path):
    """--dataset imagefolder on train/<class>/ and val/<class>/ folders (made from the synthetic set)."""
    from tllib_tune.datasets import get_dataset

    root = tmp_path / "folders"
    for split, folder in (("train", "train"), ("test", "val")):
        dataset = get_dataset("synthetic", synthetic_root, split=split, **SYNTHETIC_OPTIONS)
        for path, label in dataset.samples:  # 5 images per class and split
            target = root / folder / dataset.classes[label] / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
    log = tmp_path / "log"
    result = run_finetune(tiny_args(root, log, dataset="imagefolder", mode="tune"))
    assert_ok(result)
    assert "imagefolder: 100 train / 0 val / 100 test images, 20 classes" in result.stdout
    assert summary(log)["status"] == "completed" and summary(log)["num_classes"] == 20
    # a single tree: --val-ratio holds out the evaluation images, which are then the test split
    single = tmp_path / "single"
    (root / "train").rename(single)
    result = run_finetune(tiny_args(single, tmp_path / "log2", dataset="imagefolder", val_ratio=0.2))
    assert_ok(result)
    assert "imagefolder: 80 train / 0 val / 20 test images" in result.stdout
    assert "has no test split: the --val-ratio part held out of train is the test split" in result.stdout


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
    # the session's smaller set
    config = dataclasses.replace(parse_config(flags), dataset_options={"synthetic": SYNTHETIC_OPTIONS})
    final = runner.Runner(config).run()
    out = capsys.readouterr().out
    assert "Quick start (offline): a synthetic fine-grained data set" in out
    assert "random initialisation (`pretrained` none, no download)" in out  # the library's own terms
    assert f"final test acc1 {final['test_acc1']:.2f}%" in out
