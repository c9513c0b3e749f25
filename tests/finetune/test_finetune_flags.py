"""The flags for short memory and timm habits, end to end: --grad-accum-steps equals a larger batch,
--grad-checkpointing and --compile keep tune mode's loss curve and change its activation memory as they
should, and every flag composes with every mode (--sched cosine, --warmup-epochs, --label-smoothing,
--save-every included).

Subprocess runs are tiny (resnet18 at 32 px, batch 4, a few steps); the reference curves are the per-mode
runs of conftest.mode_runs. The compile runs use torch.compile's default backend (inductor): the slowest
tests here, about a minute each on 2 CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from tllib_tune.finetune import FinetuneConfig, Hook, Runner

from .conftest import (
    MODE_RUN,
    MODES,
    SYNTHETIC_OPTIONS,
    assert_ok,
    curve,
    records,
    run_finetune,
    summary,
    tiny_args,
)


def activations(log) -> list:
    """Saved-for-backward MiB of each epoch's first step."""
    return [r["activations_mb"] for r in records(log)]


def test_grad_accumulation_equals_the_larger_batch_in_tune_mode(synthetic_root, backbone_file, tmp_path):
    flags = dict(mode="tune", epochs=1, iters_per_epoch=3, seed=5)
    accum, large = tmp_path / "accum", tmp_path / "large"
    assert_ok(run_finetune(tiny_args(synthetic_root, accum, backbone_file, grad_accum_steps=2, **flags)))
    assert_ok(run_finetune(tiny_args(synthetic_root, large, backbone_file, batch_size=8, **flags)))
    assert torch.allclose(curve(accum), curve(large), rtol=1e-5, atol=0), (curve(accum), curve(large))
    assert torch.equal(curve(accum, "train/acc1"), curve(large, "train/acc1"))
    assert torch.allclose(curve(accum, "val/loss"), curve(large, "val/loss"), rtol=1e-5, atol=0)
    a = torch.load(accum / "checkpoints" / "latest.pt", weights_only=True)["model"]
    b = torch.load(large / "checkpoints" / "latest.pt", weights_only=True)["model"]
    for key in b:
        assert torch.allclose(a[key].double(), b[key].double(), rtol=1e-4, atol=1e-6), key
    # a micro-batch of 4 keeps about half of what a batch of 8 keeps
    assert activations(accum)[0] == pytest.approx(activations(large)[0] / 2, rel=0.05)


def test_grad_checkpointing_keeps_tune_modes_curve_with_less_memory(
    mode_runs, synthetic_root, backbone_file, tmp_path
):
    result, reference = mode_runs["tune"]
    assert_ok(result)
    log = tmp_path / "checkpointed"
    flags = dict(mode="tune", grad_checkpointing="", **MODE_RUN)
    assert_ok(run_finetune(tiny_args(synthetic_root, log, backbone_file, **flags)))
    assert torch.allclose(curve(log), curve(reference), rtol=1e-6, atol=0)
    assert torch.allclose(curve(log, "val/loss"), curve(reference, "val/loss"), rtol=1e-6, atol=0)
    checkpointed, plain = activations(log)[0], activations(reference)[0]
    assert checkpointed < 0.8 * plain, (checkpointed, plain)  # the savings add up with Tune's


def test_compile_tune_follows_eager_tune_and_keeps_less_than_compile_eval(
    mode_runs, synthetic_root, backbone_file, tmp_path
):
    result, eager = mode_runs["tune"]
    assert_ok(result)
    tune, evaluation = tmp_path / "compiled_tune", tmp_path / "compiled_eval"
    assert_ok(
        run_finetune(tiny_args(synthetic_root, tune, backbone_file, mode="tune", compile="", **MODE_RUN))
    )
    flags = dict(MODE_RUN, epochs=1, iters_per_epoch=1)
    assert_ok(
        run_finetune(tiny_args(synthetic_root, evaluation, backbone_file, mode="eval", compile="", **flags))
    )
    assert torch.allclose(curve(tune), curve(eager), rtol=1e-4, atol=0), (curve(tune), curve(eager))
    assert activations(tune)[0] < activations(evaluation)[0], (activations(tune), activations(evaluation))
    assert summary(tune)["args"]["compile"] is True


class _Watch(Hook):
    """Records every step's learning rate and where latest.pt stands after the step."""

    def __init__(self):
        self.lrs, self.saved = [], []

    def after_step(self, epoch, step, values):
        self.lrs.append(values["lr"])
        checkpoint = torch.load(self.runner.log_dir / "checkpoints" / "latest.pt", weights_only=True)
        self.saved.append((checkpoint["epoch"], checkpoint["iteration"]))


@pytest.mark.parametrize("mode", MODES)
def test_every_flag_composes_with_every_mode(mode, synthetic_root, tmp_path):
    config = FinetuneConfig(
        dataset="synthetic", root=str(synthetic_root), arch="resnet18", pretrained="none", input_size=32,
        batch_size=2, grad_accum_steps=2, epochs=2, iters_per_epoch=2, workers=0, device="cpu",
        mode=mode, log=str(tmp_path / mode), sched="cosine", warmup_epochs=1, label_smoothing=0.1,
        grad_checkpointing=True, save_every=1, compile=True, compile_backend="aot_eager", lr=0.01,
        progress_interval=3600, dataset_options={"synthetic": SYNTHETIC_OPTIONS},
    )  # fmt: skip
    watch = _Watch()
    final = Runner(config, hooks=[watch], say=lambda line: None).run()
    assert math.isfinite(final["test_acc1"]) and summary(tmp_path / mode)["status"] == "completed"
    # cosine after one epoch of linear warm-up, per step: 1/2, 1, then cos over the last 2 steps: 1, 1/2
    # (the backbone's group; random init: the backbone trains at the full rate)
    assert watch.lrs == pytest.approx([0.005, 0.01, 0.01, 0.005])
    # --save-every 1: latest.pt after every step but an epoch's last, which the epoch's end saves
    assert watch.saved == [(0, 1), (0, 1), (1, 1), (1, 1)]
