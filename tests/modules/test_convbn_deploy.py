"""Deploy mode: exact round trips, state_dict while folded, training while folded, mixed dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import randomize_bn_, rel_err
from tllib_tune import ConvBN, LinearBN


def _block(bias=True, affine=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    block = ConvBN(3, 5, 3, bias=bias, affine=affine).to(dtype)
    randomize_bn_(block.bn, torch.Generator().manual_seed(seed))
    block.eval()
    return block


def _params(block):
    return {name: t.detach().clone() for name, t in block.state_dict().items()}


@pytest.mark.parametrize(
    "bias,affine,trips", [(True, True, 1000), (False, True, 100), (True, False, 100), (False, False, 100)]
)
def test_deploy_round_trips_are_bitwise_exact(bias, affine, trips):
    block = _block(bias, affine)
    before = _params(block)
    for _ in range(trips):
        block.mode = "deploy"
        block.mode = "tune"
    for name, value in _params(block).items():
        assert torch.equal(value, before[name]), name


def test_the_inverse_formula_alone_would_drift():
    """What the kept values avoid: unfolding by the formula is exact only to round-off, and drifts."""
    from tllib_tune.modules.fold import fold_bn, unfold_bn_beta

    block = _block()
    bn, weight, bias = block.bn, block.conv.weight.detach(), block.conv.bias.detach()
    beta = bn.bias.detach().clone()
    for _ in range(100):
        _, folded_b = fold_bn(weight, bias, bn.weight, beta, bn.running_mean, bn.running_var, bn.eps)
        beta = unfold_bn_beta(folded_b, bias, bn.weight, bn.running_mean, bn.running_var, bn.eps)
    assert not torch.equal(beta, bn.bias)


@pytest.mark.parametrize("affine", [True, False])
def test_state_dict_in_deploy_is_evals_bitwise(affine):
    model = nn.Sequential(_block(affine=affine), nn.ReLU(), _block(bias=False, affine=affine, seed=1))
    expected = _params(model)
    for block in (model[0], model[2]):
        block.mode = "deploy"
    state = model.state_dict()
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert not torch.equal(model[0].conv.weight, expected["0.conv.weight"])  # the parameters are folded


def _manual_unfold(block):
    """Independent reference for leaving deploy after training: W = W' / s, beta = b' - (b - mean) * s
    (with BatchNorm affine), or b = b' / s + mean (without), s = gamma / sqrt(var + eps), in float64."""
    bn, conv = block.bn, block.conv
    gamma = bn.weight.double() if bn.weight is not None else 1.0
    s = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() / s.view(-1, 1, 1, 1)
    mean = bn.running_mean.double()
    if bn.bias is not None:
        b = conv.bias.double() if conv.bias is not None else 0.0
        return weight, bn.bias.double() - (b - mean) * s
    return weight, conv.bias.double() / s + mean


@pytest.mark.parametrize("affine", [True, False])
def test_training_in_deploy_then_leaving_unfolds_by_the_formula(affine):
    block = _block(affine=affine, dtype=torch.float64)
    block.mode = "deploy"
    opt = torch.optim.SGD(block.parameters(), lr=0.05)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for _ in range(2):
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()
    expected_w, expected_b = _manual_unfold(block)
    slot = "bn.bias" if affine else "conv.bias"
    state = block.state_dict()  # state_dict while folded gives the same unfold
    assert rel_err(state["conv.weight"], expected_w) < 1e-14
    assert rel_err(state[slot], expected_b) < 1e-14
    block.mode = "eval"
    assert rel_err(block.conv.weight, expected_w) < 1e-14
    assert rel_err(block.get_parameter(slot), expected_b) < 1e-14


def test_a_change_through_data_is_seen_too():
    block = _block(dtype=torch.float64)
    block.mode = "deploy"
    block.conv.weight.data.mul_(2.0)  # bumps no version counter
    expected_w, expected_b = _manual_unfold(block)
    block.mode = "eval"
    assert rel_err(block.conv.weight, expected_w) < 1e-14
    assert rel_err(block.bn.bias, expected_b) < 1e-14


def test_loading_a_checkpoint_in_deploy_and_leaving_gives_the_checkpoint_exactly():
    source = _block(seed=3)
    state = _params(source)
    block = _block(seed=4)
    block.mode = "deploy"
    block.load_state_dict(state)
    x = torch.randn(2, 3, 6, 6)
    source.mode = "deploy"
    assert torch.equal(block(x), source(x))
    block.mode = "eval"
    for name, value in _params(block).items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("mode", ["train", "eval", "tune", "deploy"])
def test_bfloat16_convolution_with_float32_batchnorm(mode):
    """The dtypes a user gets from conv.bfloat16() with BatchNorm kept in float32."""
    block = _block()
    block.conv.to(torch.bfloat16)
    x = torch.randn(2, 3, 6, 6).bfloat16()
    reference = F.batch_norm(
        F.conv2d(x.float(), block.conv.weight.float(), block.conv.bias.float(), padding=1),
        block.bn.running_mean,
        block.bn.running_var,
        block.bn.weight,
        block.bn.bias,
        False,
        0.0,
        block.bn.eps,
    )
    before = _params(block)
    block.mode = mode
    out = block(x)
    assert out.dtype == torch.bfloat16
    if mode != "train":
        assert rel_err(out.float(), reference) < 2e-2
    if mode == "deploy":  # the same bfloat16 computation as tune's
        block.mode = "tune"
        assert torch.equal(block(x), out)
    block.mode = "eval"
    for name, value in _params(block).items():
        assert torch.equal(value, before[name]), name


def test_linear_bn_deploy_round_trip_is_exact():
    torch.manual_seed(0)
    block = LinearBN(4, 3, bias=True, mode="eval")
    randomize_bn_(block.bn, torch.Generator().manual_seed(1))
    before = _params(block)
    for _ in range(10):
        block.mode = "deploy"
        block.mode = "eval"
    for name, value in _params(block).items():
        assert torch.equal(value, before[name]), name
