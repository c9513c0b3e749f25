"""Gradient checkpointing per backbone stage: the same loss and gradients as the plain forward (float64),
less saved for backward (and in tune mode less than tune alone), names and state_dict keys unchanged,
undone exactly; the stages of our, torchvision's and timm-style models are found."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import randomize_all_bn_
from tllib_tune import set_mode
from tllib_tune.models import get_model
from tllib_tune.utils.checkpointing import (
    backbone_stages,
    disable_grad_checkpointing,
    enable_grad_checkpointing,
)
from tllib_tune.utils.memory import SavedTensorMeter


def _resnet(mode: str) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_all_bn_(get_model("resnet18"), seed=0).double()
    set_mode(model, mode)
    return model.train()


def _step(model: nn.Module, x: torch.Tensor):
    """(loss, input gradient, parameter gradients, saved-for-backward bytes) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with SavedTensorMeter(exclude=[model]) as meter:
        loss = model(x).square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), x.grad, grads, meter.bytes


@pytest.mark.parametrize("mode,reentrant", [("tune", False), ("eval", False), ("tune", True)])
def test_checkpointed_stages_give_the_plain_gradients_with_less_memory(mode, reentrant):
    model = _resnet(mode)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    keys = list(model.state_dict())
    loss, x_grad, grads, plain_bytes = _step(model, x)
    assert enable_grad_checkpointing(model, use_reentrant=reentrant) == 4  # layer1 ... layer4
    assert enable_grad_checkpointing(model) == 4 and list(model.state_dict()) == keys  # idempotent, same keys
    c_loss, c_x_grad, c_grads, checkpointed_bytes = _step(model, x)
    assert torch.equal(c_loss, loss)
    torch.testing.assert_close(c_x_grad, x_grad, rtol=1e-12, atol=1e-14)
    assert c_grads.keys() == grads.keys() and len(grads) > 40
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], rtol=1e-12, atol=1e-14, msg=name)
    assert checkpointed_bytes < 0.7 * plain_bytes, (checkpointed_bytes, plain_bytes)  # the stem stays
    if mode == "tune":  # the savings add up: tune alone already keeps less than eval
        _, _, _, eval_bytes = _step(_resnet("eval"), x)
        assert plain_bytes < eval_bytes
    with torch.no_grad(), SavedTensorMeter(exclude=[model]) as meter:
        model(x)  # evaluation runs the stages directly
    assert meter.bytes == 0
    assert disable_grad_checkpointing(model) == 4 and disable_grad_checkpointing(model) == 0
    assert _step(model, x)[3] == plain_bytes  # undone: the plain forward again


def test_the_stages_of_other_models_are_found():
    mobilenet = torchvision.models.mobilenet_v3_small()
    assert backbone_stages(mobilenet) == list(mobilenet.features.children())

    class Staged(nn.Module):  # timm's ConvNeXt / our RegNet style
        def __init__(self):
            super().__init__()
            self.stages = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))

    staged = Staged()
    assert backbone_stages(staged) == list(staged.stages)
    with pytest.raises(ValueError, match="cannot find the stages of Linear for gradient checkpointing"):
        enable_grad_checkpointing(nn.Linear(2, 2))


@pytest.mark.parametrize("mode,reentrant", [("train", False), ("inplace-abn", False), ("train", True)])
def test_batch_statistics_update_the_running_ones_once(mode, reentrant):
    """Train mode and In-Place ABN update running statistics in the forward: the recomputation for
    backward must not update them a second time."""
    from tllib_tune.modules.inplace_abn import convert_to_inplace_abn

    plain, checkpointed = _resnet("train"), _resnet("train")
    if mode == "inplace-abn":
        plain, checkpointed = convert_to_inplace_abn(plain), convert_to_inplace_abn(checkpointed)
    enable_grad_checkpointing(checkpointed, use_reentrant=reentrant)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss, x_grad, grads, _ = _step(plain, x)
    c_loss, c_x_grad, c_grads, _ = _step(checkpointed, x)
    torch.testing.assert_close(c_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_x_grad, x_grad, rtol=1e-10, atol=1e-14)
    buffers = dict(checkpointed.named_buffers())
    assert any(k.endswith("num_batches_tracked") for k in buffers)
    for name, expected in plain.named_buffers():
        assert torch.equal(buffers[name], expected), name  # num_batches_tracked 1, stats updated once
    assert all(m.momentum == 0.1 for m in checkpointed.modules() if hasattr(m, "track_running_stats"))
