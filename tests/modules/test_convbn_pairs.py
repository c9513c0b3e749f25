"""ConvBN/LinearBN.from_modules on the pairs any model has: every convolution and BatchNorm kind, each mode
(with module.train() and module.eval()) against the original modules' own forward, in float64."""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
from torch import nn

from tests.conftest import rel_err
from tllib_tune import ConvBN, LinearBN, Mode
from tllib_tune.modules.convbn import convbn_unsupported_reason

timm_layers = pytest.importorskip("timm.layers")
misc = pytest.importorskip("torchvision.ops.misc")


class PlainSubclassConv2d(nn.Conv2d):
    """A user's subclass that keeps Conv2d's forward (e.g. to add an attribute)."""


CONVS = {  # name: (rank of the output, builder)
    "conv1d_grouped_reflect": (3, lambda: nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="reflect")),  # noqa: E501
    "conv2d_depthwise_circular": (4, lambda: nn.Conv2d(4, 4, 3, stride=2, padding=(0, 2), groups=4, bias=False, padding_mode="circular")),  # noqa: E501
    "conv2d_same_even_kernel": (4, lambda: nn.Conv2d(4, 6, 4, padding="same")),
    "conv2d_subclass": (4, lambda: PlainSubclassConv2d(4, 6, 3, stride=2, padding=1, bias=False)),
    "conv3d_dilated": (5, lambda: nn.Conv3d(4, 6, 3, padding=2, dilation=2)),
    "timm_conv2d_same": (4, lambda: timm_layers.Conv2dSame(4, 6, 3, stride=2, bias=True)),
    "timm_create_conv2d_same_s2": (4, lambda: timm_layers.create_conv2d(4, 6, 3, stride=2, padding="same")),
    "timm_create_conv2d_same_k4": (4, lambda: timm_layers.create_conv2d(4, 6, 4, padding="same", dilation=2)),
}  # fmt: skip  # noqa: E501

NORMS = {  # name: (ranks it normalises, builder for C channels and rank)
    "batchnorm": ((3, 4, 5), lambda c, r: {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[r](c)),
    "batchnorm_no_affine": ((3, 4), lambda c, r: {3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[r](c, affine=False)),
    "syncbatchnorm": ((3, 4, 5), lambda c, r: nn.SyncBatchNorm(c)),
    "timm_batchnormact2d": ((4,), lambda c, r: timm_layers.BatchNormAct2d(c, act_layer=nn.SiLU, inplace=False)),  # noqa: E501
    "timm_syncbatchnormact": ((4,), lambda c, r: timm_layers.convert_sync_batchnorm(timm_layers.BatchNormAct2d(c, act_layer=nn.ELU, inplace=False))),  # noqa: E501
    "torchvision_frozenbatchnorm2d": ((4,), lambda c, r: misc.FrozenBatchNorm2d(c)),
    "timm_frozenbatchnormact2d": ((4,), lambda c, r: timm_layers.FrozenBatchNormAct2d(c, act_layer=nn.SiLU, inplace=False)),  # noqa: E501
}  # fmt: skip  # noqa: E501

PAIRS = [(c, n) for c, n in itertools.product(CONVS, NORMS) if CONVS[c][0] in NORMS[n][0]]
SPATIAL = {3: (11,), 4: (9, 8), 5: (5, 6, 5)}


def randomize_(bn: nn.Module, gen: torch.Generator) -> nn.Module:
    """Pretrained-like statistics and affine tensors on any BatchNorm kind (parameters or buffers)."""
    with torch.no_grad():
        c = bn.running_var.shape[0]
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(0.2 + 3 * torch.rand(c, generator=gen, dtype=torch.float64))
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c, generator=gen, dtype=torch.float64) * 2)
            bn.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
    return bn


def tail(bn: nn.Module):
    """What the converter's placeholder applies after the block: timm's drop and activation, if any."""
    drop, act = getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())
    return lambda y: act(drop(y))


def make_pair(conv_kind: str, norm_kind: str, seed: int = 0):
    torch.manual_seed(seed)
    rank, build_conv = CONVS[conv_kind]
    conv = build_conv().double()
    bn = NORMS[norm_kind][1](conv.out_channels, rank).double()
    randomize_(bn, torch.Generator().manual_seed(seed))
    x = torch.randn(3, 4, *SPATIAL[rank], dtype=torch.float64)
    return conv, bn, x


def run(module: nn.Module, x: torch.Tensor, after=None):
    """Output, input gradient and parameter gradients (by name) of one forward/backward (the upstream
    gradient depends on the output's shape only)."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = module(x)
    out = after(out) if after is not None else out
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), x.grad, grads


def as_block_names(ref_grads):
    return {name.replace("0.", "conv.", 1).replace("1.", "bn.", 1): g for name, g in ref_grads.items()}


def assert_same(actual, expected, tol):
    (out, dx, grads), (ref_out, ref_dx, ref_grads) = actual, expected
    assert rel_err(out, ref_out) < tol
    assert rel_err(dx, ref_dx) < tol
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        assert grad is not None and grads[name] is not None, name
        assert rel_err(grads[name], grad) < tol, name


def assert_state_matches(block: nn.Module, ref: nn.Sequential):
    state = block.state_dict()
    expected = {k.replace("0.", "conv.", 1).replace("1.", "bn.", 1): v for k, v in ref.state_dict().items()}
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("conv_kind,norm_kind", PAIRS)
def test_every_mode_computes_the_original_modules(conv_kind, norm_kind):
    conv, bn, x = make_pair(conv_kind, norm_kind)
    ref = copy.deepcopy(nn.Sequential(conv, bn))
    after = tail(bn)
    assert convbn_unsupported_reason(conv, bn) is None
    block = ConvBN.from_modules(conv, bn)
    assert block.conv is conv and block.bn is bn
    # train mode, with module.train() (batch statistics, running statistics updated) and module.eval()
    for training in (True, False):
        block.train(training)
        ref.train(training)
        expected = run(ref, x)
        expected = (expected[0], expected[1], as_block_names(expected[2]))
        assert_same(run(block, x, after), expected, 1e-12)
        assert_state_matches(block, ref)
    # eval, tune and deploy: the original in eval (running statistics), whether the block is training or not
    ref.eval()
    expected = run(ref, x)
    expected = (expected[0], expected[1], as_block_names(expected[2]))
    for training in (True, False):
        block.train(training)
        block.mode = "eval"
        eval_result = run(block, x, after)
        assert_same(eval_result, expected, 1e-12)
        block.mode = "tune"
        assert_same(run(block, x, after), eval_result, 1e-10)
        assert_state_matches(block, ref)
        block.mode = "deploy"
        with torch.no_grad():
            assert rel_err(after(block(x)), expected[0]) < 1e-10
        assert_state_matches(block, ref)  # deploy's state_dict: the unfolded values, exactly
        block.mode = "train"
        assert_state_matches(block, ref)


@pytest.mark.parametrize("norm_kind", ["torchvision_frozenbatchnorm2d", "timm_frozenbatchnormact2d"])
def test_frozen_batchnorm_stays_frozen(norm_kind):
    conv, bn, x = make_pair("conv2d_subclass", norm_kind)
    frozen = {name: t.clone() for name, t in bn.state_dict().items()}
    block = ConvBN.from_modules(conv, bn)
    block.train()
    for mode in ("train", "eval", "tune"):
        block.mode = mode
        block.zero_grad(set_to_none=True)
        block(x).square().sum().backward()
        assert conv.weight.grad is not None
        assert all(t.grad is None and not t.requires_grad for t in bn.buffers()), mode
        assert list(block.bn.parameters()) == []
    for name, value in bn.state_dict().items():  # train mode is the frozen transform: no statistics update
        assert torch.equal(value, frozen[name]), name
    # deploy folds into the buffers and unfolds back
    block.mode = "deploy"
    assert not torch.equal(bn.bias, frozen["bias"])
    block.mode = "eval"
    for name, value in bn.state_dict().items():
        assert torch.equal(value, frozen[name]), name


@pytest.mark.parametrize("mode", ["train", "eval", "tune", "deploy"])
def test_batchnormact_block_computes_only_the_normalisation(mode):
    """The converter applies BatchNormAct2d's drop and activation after the block: the block must not."""
    torch.manual_seed(0)
    conv = timm_layers.Conv2dSame(4, 6, 3, stride=2).double()
    bn = randomize_(
        timm_layers.BatchNormAct2d(6, act_layer=nn.ReLU).double(), torch.Generator().manual_seed(0)
    )
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    plain = nn.BatchNorm2d(6).double()  # the normalisation alone, with the same tensors
    plain.load_state_dict(bn.state_dict())
    plain.train(mode == "train")
    with torch.no_grad():
        expected = plain(conv(x))
    block = ConvBN.from_modules(conv, bn, mode=mode)
    block.train()
    with torch.no_grad():
        out = block(x)
    assert (out < 0).any()  # no ReLU
    assert rel_err(out, expected) < 1e-12
    assert torch.equal(bn.running_mean, plain.running_mean)


class _FlatLinearNorm(nn.Module):
    """Reference: Linear, then BatchNorm1d on the [M, features] view (timm LeViT's LinearNorm for 3-d)."""

    def __init__(self, linear_norm):
        super().__init__()
        self.linear, self.bn = linear_norm.linear, linear_norm.bn
        self.levit = linear_norm

    def forward(self, x):
        if x.dim() == 3:
            return self.levit(x)
        y = self.linear(x)
        return self.bn(y.reshape(-1, y.shape[-1])).reshape(y.shape)


@pytest.mark.parametrize("shape", [(2, 7, 5), (3, 5), (5,), (2, 2, 3, 5)])
def test_linear_bn_on_any_leading_dimensions_as_timm_levit(shape):
    levit = pytest.importorskip("timm.models.levit")
    torch.manual_seed(0)
    ref = _FlatLinearNorm(levit.LinearNorm(5, 6).double())
    randomize_(ref.bn, torch.Generator().manual_seed(2))
    module = copy.deepcopy(ref)
    block = LinearBN.from_modules(module.linear, module.bn)
    x = torch.randn(shape, dtype=torch.float64)
    for training in (True, False) if len(shape) > 1 else (False,):  # one row has no batch statistics
        ref.train(training)
        block.train(training)
        expected, result = run(ref, x), run(block, x)
        assert rel_err(result[0], expected[0]) < 1e-12 and rel_err(result[1], expected[1]) < 1e-12
        assert torch.equal(block.bn.running_var, ref.bn.running_var)
    ref.eval()
    expected = run(ref, x)
    for mode in ("eval", "tune", "deploy"):
        block.mode = mode
        result = run(block, x)
        assert result[0].shape == shape[:-1] + (6,)
        assert rel_err(result[0], expected[0]) < 1e-10, mode
        if mode != "deploy":
            assert rel_err(result[1], expected[1]) < 1e-10, mode
            for name, p in ref.named_parameters():
                name = name.replace("levit.", "")
                assert rel_err(block.get_parameter(name).grad, p.grad) < 1e-10, (mode, name)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(3), nn.SyncBatchNorm(3)])
def test_linear_bn_from_modules_with_batchnorm1d_and_syncbatchnorm(norm):
    norm = randomize_(norm.double(), torch.Generator().manual_seed(0))
    block = LinearBN.from_modules(nn.Linear(4, 3).double(), norm)
    x = torch.randn(6, 4, dtype=torch.float64)
    block.mode = "eval"
    expected = block(x)
    block.mode = "tune"
    assert rel_err(block(x), expected) < 1e-12
    block.mode = "train"
    assert block(x).shape == (6, 3)


class OwnForwardBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


def _refusals():
    std = timm_layers.StdConv2d(4, 6, 3)
    return [
        ("timm StdConv2d", std, nn.BatchNorm2d(6), TypeError, r"StdConv2d \(timm\.layers\.std_conv\) has its own forward"),  # noqa: E501
        ("transposed", nn.ConvTranspose2d(4, 6, 3), nn.BatchNorm2d(6), TypeError, "ConvTranspose2d .* is a transposed convolution"),  # noqa: E501
        ("own-forward BN", nn.Conv2d(4, 6, 3), OwnForwardBN(6), TypeError, "OwnForwardBN .* has its own forward"),  # noqa: E501
        ("not a BN", nn.Conv2d(4, 6, 3), nn.GroupNorm(2, 6), TypeError, "GroupNorm .* is not a BatchNorm"),
        ("rank", nn.Conv1d(4, 6, 3), nn.BatchNorm2d(6), TypeError, "BatchNorm2d normalises 4-d input but Conv1d produces 3-d"),  # noqa: E501
        ("frozen after linear", nn.Linear(4, 6), misc.FrozenBatchNorm2d(6), TypeError, "FrozenBatchNorm2d normalises 4-d input but Linear"),  # noqa: E501
        ("channels", nn.Conv2d(4, 6, 3), nn.BatchNorm2d(5), ValueError, "BatchNorm2d has 5 features but the Conv2d produces 6"),  # noqa: E501
        ("lazy", nn.LazyConv2d(6, 3), nn.BatchNorm2d(6), ValueError, "lazy module not initialised"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(8))
def test_unsupported_pairs_are_refused_with_the_reason(case):
    _, op, bn, error, reason = _refusals()[case]
    found = convbn_unsupported_reason(op, bn)
    assert found is not None and re.search(reason, found), found
    build = LinearBN.from_modules if isinstance(op, nn.Linear) else ConvBN.from_modules
    with pytest.raises(error, match=reason):
        build(op, bn)


def test_linear_to_convbn_and_conv_to_linearbn_are_type_errors():
    with pytest.raises(TypeError, match="LinearBN.from_modules"):
        ConvBN.from_modules(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(TypeError, match="needs an nn.Linear, got Conv1d"):
        LinearBN.from_modules(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4))


def test_batchnorm_without_running_stats_is_train_only():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)
    reason = convbn_unsupported_reason(conv, bn)
    assert "track_running_stats=False" in reason
    assert convbn_unsupported_reason(conv, bn, modes=["train"]) is None
    block = ConvBN.from_modules(conv, bn)  # train mode works, as for ConvBN(..., track_running_stats=False)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), bn(conv(x)))
    for mode in ("eval", "tune", "deploy"):
        with pytest.raises(ValueError, match="track_running_stats=False"):
            block.mode = mode
        with pytest.raises(ValueError, match="track_running_stats=False"):
            ConvBN.from_modules(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), mode=mode)
    assert block.mode is Mode.TRAIN


@pytest.mark.parametrize("norm_kind", ["syncbatchnorm", "timm_syncbatchnormact"])
def test_train_mode_runs_syncbatchnorms_own_forward(norm_kind, monkeypatch):
    """Under DDP SyncBatchNorm's forward synchronises the batch statistics: train mode must run it. With
    torch.distributed seemingly initialised, that forward insists on an accelerator input: proof it ran."""
    conv, bn, x = make_pair("conv2d_subclass", norm_kind)
    block = ConvBN.from_modules(conv, bn)
    block.train()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
        block(x)
    for mode in ("eval", "tune", "deploy"):  # running statistics: nothing to synchronise
        block.mode = mode
        block(x)
