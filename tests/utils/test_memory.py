"""Activation memory accounting, and the headline claim: tune keeps deploy's memory, half of eval's."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import randomize_all_bn_
from tllib_tune import ConvBN, set_mode
from tllib_tune.utils.memory import SavedTensorMeter, activation_bytes


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
