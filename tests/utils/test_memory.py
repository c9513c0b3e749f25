"""Activation memory accounting, and the headline claim: tune keeps deploy's memory, half of eval's."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import randomize_all_bn_
from tllib_tune import ConvBN, set_mode
from tllib_tune.utils.checkpointing import disable_grad_checkpointing, enable_grad_checkpointing
from tllib_tune.utils.memory import PeakSavedMeter, SavedTensorMeter, activation_bytes


def test_meter_counts_distinct_storages_and_skips_parameters():
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with SavedTensorMeter(exclude=[lin]) as meter:
        y = lin(x)  # saves x (and the weight, excluded)
        z = torch.sigmoid(y)  # saves its output
        w = z * z  # saves z twice: one storage
    assert meter.bytes == x.numel() * 4 + z.numel() * 4
    assert meter.num_tensors == 2
    w.sum().backward()


def _stack(depth=10, width=16):
    layers = []
    for i in range(depth):
        layers += [ConvBN(3 if i == 0 else width, width, 3), nn.ReLU()]
    return randomize_all_bn_(nn.Sequential(*layers), seed=1)


def test_stack_of_ten_blocks_tune_memory_equals_deploy_and_halves_eval():
    model = _stack()
    x = torch.randn(8, 3, 64, 64)
    figures = {}
    for mode in ("eval", "tune", "deploy"):
        set_mode(model, mode)
        figures[mode] = activation_bytes(model, x)
    feature_map = 8 * 16 * 64 * 64 * 4
    # exact: eval keeps the conv input and the conv output of every block, tune and deploy the input only
    assert figures["deploy"] == x.numel() * 4 + 10 * feature_map
    assert figures["eval"] == x.numel() * 4 + 20 * feature_map
    assert figures["tune"] <= 1.01 * figures["deploy"]
    assert figures["tune"] <= 0.51 * figures["eval"]


class _Staged(nn.Module):
    """x -> Linear -> one stage (Linear, Tanh, Linear, Tanh) -> Linear, float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.stages = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()))
        self.head = nn.Linear(8, 2)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def test_peak_meter_counts_recomputation_and_reentrant_checkpointing_keeps_stage_inputs():
    model = _Staged()
    x = torch.randn(3, 4, dtype=torch.float64)
    with SavedTensorMeter(exclude=[model]) as forward:
        model(x).sum()
    with PeakSavedMeter(exclude=(model,)) as peak:
        model(x).sum().backward()
    assert peak.peak == forward.bytes and peak.live == 0  # nothing is freed before backward starts
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert enable_grad_checkpointing(model, use_reentrant=True) == 1
    with PeakSavedMeter(exclude=(model,)) as ckpt:
        with SavedTensorMeter(exclude=[model]) as ckpt_forward:
            out = model(x)
        out.sum().backward()
    assert disable_grad_checkpointing(model) == 1 and "forward" not in vars(model.stages[0])
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=0)
    row = 3 * 8 * 8  # one [3, 8] float64 activation
    # kept: x, the stage's input, its output (saved by the last Linear); dropped: the tanh inside
    assert ckpt_forward.bytes == 3 * 4 * 8 + 2 * row and forward.bytes == ckpt_forward.bytes + row
    # the recomputation ran under the meter's hooks: more was live then than the forward kept
    assert ckpt.peak > ckpt_forward.bytes and ckpt.live == 0
