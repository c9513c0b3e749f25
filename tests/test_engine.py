"""The shared loop: TLlib's optimizer recipe, train_one_epoch's metrics and stops, validate's figures."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tllib_tune import ConvBN, set_mode
from tllib_tune.engine import (
    DataLoadingError,
    NonFiniteLossError,
    build_optimizer,
    train_one_epoch,
    validate,
)
from tllib_tune.utils.data import EpochBatchSampler, SeededDataset
from tllib_tune.utils.memory import MIB, SavedTensorMeter

from .conftest import randomize_all_bn_, tiny_convbn_features


class Tiny(nn.Module):
    """backbone (two ConvBN blocks) + linear head, with Classifier's get_parameters recipe."""

    def __init__(self, classes=3, width=8):
        super().__init__()
        self.backbone = tiny_convbn_features(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.backbone(x))

    def get_parameters(self, base_lr=1.0):
        return [
            {"params": self.backbone.parameters(), "lr": 0.1 * base_lr},
            {"params": self.head.parameters(), "lr": base_lr},
        ]


def colour_data(n=48, size=12, seed=0):
    """Images whose class is the brightest channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randn(n, 3, size, size, generator=g) * 0.5
    images[torch.arange(n), labels] += 1.5
    return TensorDataset(images, labels)


def loader_for(dataset, batch=8, iters=6, seed=0, epoch=0):
    sampler = EpochBatchSampler(len(dataset), batch, iters, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler)


def make(mode="train", seed=0):
    torch.manual_seed(seed)
    model = randomize_all_bn_(Tiny(), seed=seed)
    set_mode(model.backbone, mode)
    return model


def test_build_optimizer_is_tllib_recipe():
    model = Tiny()
    optimizer, scheduler = build_optimizer(
        model.get_parameters(0.01), lr=0.01, momentum=0.9, weight_decay=5e-4, milestones=[2, 4], gamma=0.1
    )
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [[0.001, 0.01]] * 2 + [[0.0001, 0.001]] * 2 + [[0.00001, 0.0001]] * 2
    for got, want in zip(lrs, expected):
        assert got == pytest.approx(want)


def test_train_one_epoch_learns_and_reports_every_metric():
    model = make("train")
    data = colour_data()
    optimizer, _ = build_optimizer(model.get_parameters(0.1), lr=0.1)
    first = train_one_epoch(model, loader_for(data, epoch=0), optimizer, iters_per_epoch=6, progress=False)
    for epoch in range(1, 5):
        last = train_one_epoch(
            model, loader_for(data, epoch=epoch), optimizer, iters_per_epoch=6, progress=False
        )
    for key in (
        "loss",
        "acc1",
        "lr",
        "iter_time_s",
        "data_time_s",
        "images_per_s",
        "activations_mb",
        "peak_gb",
    ):
        assert math.isfinite(last[key]) and last[key] >= 0, key
    assert last["iterations"] == 6 and last["next_iter"] == 6 and last["stopped"] == 0
    assert last["loss"] < first["loss"]
    assert last["peak_gb"] > 0.01  # the process's peak RSS on the CPU
    assert last["images_per_s"] == pytest.approx(8 / last["iter_time_s"])


def test_activation_figure_is_one_iterations_saved_bytes():
    data = colour_data(n=16)
    measured = {}
    for mode in ("eval", "tune", "deploy"):
        model = make(mode)
        optimizer, _ = build_optimizer(model.parameters(), lr=0.0)
        stats = train_one_epoch(
            model, loader_for(data, iters=1), optimizer, iters_per_epoch=1, progress=False
        )
        images, labels = next(iter(loader_for(data, iters=1)))
        with SavedTensorMeter(exclude=[model]) as meter:
            F.cross_entropy(model(images), labels)
        assert stats["activations_mb"] == pytest.approx(meter.bytes / MIB)
        measured[mode] = stats["activations_mb"]
    assert measured["tune"] == pytest.approx(measured["deploy"])
    assert measured["tune"] < measured["eval"]


def test_eval_and_tune_train_identically():
    data = colour_data()
    losses = {}
    for mode in ("eval", "tune"):
        model = make(mode).double()
        double = TensorDataset(data.tensors[0].double(), data.tensors[1])
        optimizer, _ = build_optimizer(model.parameters(), lr=0.1)
        curve = []
        train_one_epoch(
            model,
            loader_for(double),
            optimizer,
            iters_per_epoch=6,
            progress=False,
            on_step=lambda step, values, curve=curve: curve.append(values["loss"]),
        )
        losses[mode] = torch.tensor(curve)
    assert torch.allclose(losses["eval"], losses["tune"], rtol=1e-10, atol=0)


def test_should_stop_ends_after_the_current_step():
    model = make("tune")
    optimizer, _ = build_optimizer(model.parameters(), lr=0.1)
    calls = []
    stats = train_one_epoch(
        model,
        loader_for(colour_data(), iters=6),
        optimizer,
        iters_per_epoch=6,
        start_iter=2,
        progress=False,
        should_stop=lambda: len(calls) >= 1,
        on_step=lambda step, values: calls.append(step),
    )
    assert calls == [2, 3]  # the flag is read after each step's forward: the step in progress completes
    assert stats["stopped"] == 1 and stats["next_iter"] == 4 and stats["iterations"] == 2


def test_non_finite_loss_stops_before_the_update():
    model = make("tune")
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer, _ = build_optimizer(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError) as info:
        train_one_epoch(
            model, loader_for(colour_data()), optimizer, iters_per_epoch=6, epoch=3, progress=False
        )
    assert (info.value.epoch, info.value.iteration) == (3, 0) and math.isnan(info.value.value)
    for key, value in model.named_parameters():
        assert torch.allclose(value, before[key], equal_nan=True, rtol=0, atol=0), key


class Broken(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 5:
            raise OSError("image /data/x/0005.jpg is truncated")
        return torch.zeros(3, 8, 8), 0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failing_batch_raises_data_loading_error(workers):
    model = make("tune")
    optimizer, _ = build_optimizer(model.parameters(), lr=0.1)
    sampler = EpochBatchSampler(8, 8, 1)
    loader = DataLoader(SeededDataset(Broken()), batch_sampler=sampler, num_workers=workers)
    with pytest.raises(DataLoadingError, match="0005.jpg is truncated"):
        train_one_epoch(model, loader, optimizer, iters_per_epoch=1, progress=False)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_amp_and_channels_last_run(amp):
    model = make("tune").to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(model.parameters(), lr=0.1)
    stats = train_one_epoch(
        model,
        loader_for(colour_data(), iters=2),
        optimizer,
        iters_per_epoch=2,
        amp_dtype=amp,
        channels_last=True,
        progress=False,
    )
    assert math.isfinite(stats["loss"])


def test_validate_matches_a_full_batch_computation():
    model = make("train")
    data = colour_data(n=29, seed=5)
    model.train()
    result = validate(model, DataLoader(data, batch_size=8), progress=False)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        logits = model(data.tensors[0])
    labels = data.tensors[1]
    assert result["count"] == 29
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result["acc1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())
    assert result["acc5"] == 100.0  # only 3 classes


def test_sync_batchnorm_conversion_keeps_convbn_blocks():
    from tllib_tune.engine import convert_sync_batchnorm
    from tllib_tune.utils.checkpoint import block_modes

    model = make("tune")
    keys = list(model.state_dict())
    x = colour_data(n=4).tensors[0]
    model.eval()
    expected = model(x)
    converted = convert_sync_batchnorm(model)
    blocks = [m for m in converted.modules() if isinstance(m, ConvBN)]
    assert len(blocks) == 2 and all(isinstance(b.bn, nn.SyncBatchNorm) for b in blocks)
    assert list(converted.state_dict()) == keys and block_modes(converted)["counts"] == {"tune": 2}
    assert torch.allclose(converted(x), expected)
    set_mode(converted, "deploy")
    assert torch.allclose(converted(x), expected, atol=1e-6)
