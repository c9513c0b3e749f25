"""Checkpoints: atomic writes, exact resume of model/optimizer/scheduler/RNG, and clear load errors."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_convbn_features
from tllib_tune import set_mode
from tllib_tune.engine import build_optimizer
from tllib_tune.utils.checkpoint import (
    CheckpointError,
    atomic_save,
    block_modes,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    set_rng_state,
)


def tiny(width=4, classes=3):
    return nn.Sequential(*tiny_convbn_features(width), nn.Dropout(0.2), nn.Linear(width, classes))


def step(model, optimizer, n=2):
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8)  # draws from the global RNG, as augmentation would
        y = torch.randint(0, 3, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_atomic_save_leaves_no_temporary_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt" / "latest.pt"
    atomic_save({"a": torch.ones(2)}, path)
    assert torch.load(path)["a"].sum() == 2
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_save({"bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path)["a"].sum() == 2
    assert os.listdir(path.parent) == ["latest.pt"]


def test_rng_state_round_trip():
    state = get_rng_state()
    expected = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_resume_reproduces_uninterrupted_training(tmp_path):
    torch.manual_seed(0)
    model = tiny()
    set_mode(model, "tune")
    optimizer, scheduler = build_optimizer(model.parameters(), lr=0.1, milestones=[1])
    step(model, optimizer)
    scheduler.step()
    save_checkpoint(
        tmp_path / "latest.pt",
        model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=1,
        iteration=0,
        args={"arch": "tiny"},
    )
    step(model, optimizer)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)  # a fresh process: different RNG and initial weights
    resumed = tiny()
    set_mode(resumed, "tune")
    opt2, sched2 = build_optimizer(resumed.parameters(), lr=0.1, milestones=[1])
    checkpoint = load_checkpoint(tmp_path / "latest.pt")
    load_model_state(resumed, checkpoint["model"])
    opt2.load_state_dict(checkpoint["optimizer"])
    sched2.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    assert (checkpoint["epoch"], checkpoint["iteration"], checkpoint["args"]) == (1, 0, {"arch": "tiny"})
    step(resumed, opt2)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_block_modes_are_saved(tmp_path):
    model = tiny()
    set_mode(model[2], "deploy")
    set_mode(model[0], "tune")
    assert block_modes(model) == {"counts": {"tune": 1, "deploy": 1}, "blocks": {"0": "tune", "2": "deploy"}}
    save_checkpoint(tmp_path / "c.pt", model)
    checkpoint = load_checkpoint(tmp_path / "c.pt")
    assert checkpoint["modes"]["blocks"] == {"0": "tune", "2": "deploy"}
    # deploy folds weights in place, yet the checkpoint holds the canonical (unfolded) values
    fresh = tiny()
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(checkpoint["model"]["2.conv.weight"], fresh[2].conv.weight)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, tiny())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_plain_state_dict_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a tllib_tune training checkpoint"):
        load_checkpoint(path)


def test_model_mismatch_names_the_keys():
    state = tiny(width=4).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatches.*0\.conv\.weight"):
        load_model_state(tiny(width=6), state)
    partial = dict(state)
    del partial["7.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: 7\.bias"):
        load_model_state(tiny(), partial)
    extra = dict(state, **{"head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: head\.weight"):
        load_model_state(tiny(), extra)
    model = tiny()
    load_model_state(model, {f"module.{k}": v for k, v in state.items()})  # a DDP-prefixed state loads
    assert torch.equal(model[7].weight, state["7.weight"])
