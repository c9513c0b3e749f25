"""AverageMeter and accuracy against direct computations."""

import pytest
import torch

from tllib_tune.utils.meters import AverageMeter, accuracy


def test_average_meter_is_weighted_by_n():
    meter = AverageMeter("loss")
    meter.update(2.0, n=3)
    meter.update(5.0, n=1)
    assert meter.count == 4
    assert meter.avg == pytest.approx((2.0 * 3 + 5.0) / 4)
    assert meter.val == 5.0
    assert "loss" in str(meter)
    meter.reset()
    assert meter.count == 0 and meter.avg == 0.0


def test_average_meter_rejects_negative_n():
    with pytest.raises(ValueError, match="n must be >= 0"):
        AverageMeter().update(1.0, n=-1)


def test_accuracy_matches_a_direct_count(generator):
    logits = torch.randn(50, 7, generator=generator)
    target = torch.randint(0, 7, (50,), generator=generator)
    top1, top3 = accuracy(logits, target, topk=(1, 3))
    ranks = (logits > logits.gather(1, target[:, None])).sum(1)  # classes scored above the true one
    assert top1 == pytest.approx(100.0 * (ranks < 1).float().mean().item())
    assert top3 == pytest.approx(100.0 * (ranks < 3).float().mean().item())
    assert accuracy(logits, target, topk=(10,))[0] == 100.0  # k beyond the class count covers everything


def test_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
