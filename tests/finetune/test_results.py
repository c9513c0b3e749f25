"""tllib_tune.finetune.results: an interrupted epoch's two parts merge into the averages of all its steps,
and the run-level figures weight times by steps."""

from __future__ import annotations

import math

import pytest

from tllib_tune.finetune.results import EpochResult, EvalResult, TrainResult, summarize


def part(losses, accs, **extra) -> TrainResult:
    """What train_one_epoch reports for steps with these per-step losses and accuracies (same batch size)."""
    n = len(losses)
    stats = dict(loss=sum(losses) / n if n else 0.0, acc1=sum(accs) / n if n else 0.0, lr=0.1,
                 iter_time_s=0.5, data_time_s=0.1, images_per_s=64.0, activations_mb=30.0, peak_gb=1.0,
                 iterations=float(n), next_iter=float(n), stopped=0.0)  # fmt: skip
    stats.update(extra)
    return TrainResult.from_stats(stats)


def test_the_two_parts_of_an_epoch_average_over_all_its_steps():
    losses, accs = [2.0, 1.5, 1.25, 1.0, 0.5], [10.0, 20.0, 40.0, 50.0, 80.0]
    before = part(losses[:3], accs[:3], stopped=1.0)
    after = part(losses[3:], accs[3:], iter_time_s=0.25, next_iter=5.0)
    merged = after.merged_with(before)
    assert merged.loss == pytest.approx(sum(losses) / 5) and merged.acc1 == pytest.approx(sum(accs) / 5)
    assert (merged.iterations, merged.next_iter, merged.stopped, merged.iter_time_s) == (5, 5, False, 0.25)
    assert after.merged_with(None) is after and after.merged_with(part([], [])) is after
    # stopped again before a step of the second part ran: the first part's figures, the new position
    nothing = part([], [], lr=0.01, next_iter=3.0, stopped=1.0)
    again = nothing.merged_with(before)
    assert (again.loss, again.iterations, again.next_iter, again.stopped, again.lr) == (
        before.loss,
        3,
        3,
        True,
        0.01,
    )


def test_a_checkpoint_round_trip_keeps_the_part():
    before = part([1.0, 3.0], [0.0, 50.0], stopped=1.0)
    assert TrainResult.from_stats(before.to_dict()) == before
    assert isinstance(before.iterations, int) and before.stopped is True


def test_the_epoch_record_keeps_the_metrics_file_format():
    result = EpochResult(2, "tune", part([1.0], [50.0]), EvalResult(1.5, 40.0, 70.0, 100), "test")
    keys = "epoch mode lr train_loss train_acc1 test_loss test_acc1 iter_time_s data_time_s images_per_s"
    assert list(result.record()) == [*keys.split(), "activations_mb", "peak_gb", "iterations"]
    assert result.record()["iterations"] == 1.0 and result.scalars()["val/acc1"] == 40.0
    assert result.line(5).startswith("epoch 3/5 [tune] lr 0.1  train loss 1.0000 acc1 50.0  test loss 1.5000")


def test_run_figures_weight_times_by_steps_and_take_peak_memory():
    records = [
        {"mode": "train", "iter_time_s": 1.0, "activations_mb": 50.0, "peak_gb": 2.0, "iterations": 3.0},
        {"mode": "tune", "iter_time_s": 2.0, "activations_mb": 30.0, "peak_gb": 1.5, "iterations": 1.0},
        {"mode": "tune", "iter_time_s": None, "activations_mb": 31.0, "peak_gb": None, "iterations": 1.0},
    ]
    figures = summarize(records)
    assert figures["iter_time_s"] == pytest.approx((1.0 * 3 + 2.0 * 1) / 4)
    assert (figures["activations_mb"], figures["peak_gb"], figures["images_per_s"]) == (50.0, 2.0, None)
    assert (
        figures["by_mode"]["tune"]["activations_mb"] == 31.0
        and figures["by_mode"]["tune"]["iter_time_s"] == 2.0
    )
    assert not math.isnan(figures["by_mode"]["train"]["iter_time_s"])
