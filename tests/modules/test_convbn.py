"""ConvBN / LinearBN: every mode against torch's own Conv + BatchNorm, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import randomize_bn_, rel_err
from tllib_tune import ConvBN, LinearBN, Mode
from tllib_tune.modules.ops import LINEAR, OpSpec
from tllib_tune.modules.tune import TuneFunction, choose_strategy

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}

GRID = list(
    itertools.product(
        (1, 2, 3),  # dim
        ("groups1", "depthwise"),
        (1, 2),  # stride
        (1, 2),  # dilation
        (True, False),  # conv bias
        (True, False),  # affine BN
    )
)


def _make_block(dim, grouping, stride, dilation, bias, affine, seed):
    gen = torch.Generator().manual_seed(seed)
    cin, cout = (4, 6) if grouping == "groups1" else (4, 4)
    groups = 1 if grouping == "groups1" else 4
    block = ConvBN(
        cin, cout, 3, stride=stride, dilation=dilation, groups=groups, bias=bias, dim=dim, affine=affine
    )
    block = block.double()
    randomize_bn_(block.bn, gen)
    x = torch.randn(2, cin, *SPATIAL[dim], generator=gen, dtype=torch.float64)
    return block, x, gen


def _reference(block):
    """Independent torch Conv + BatchNorm holding copies of the block's parameters and statistics."""
    conv = block.conv
    dim = conv.weight.dim() - 2
    ref_conv = CONV[dim](
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).double()
    ref_bn = BN[dim](block.bn.num_features, eps=block.bn.eps, affine=block.bn.affine).double()
    ref_conv.load_state_dict(block.conv.state_dict())
    ref_bn.load_state_dict(block.bn.state_dict())
    return ref_conv, ref_bn


def _grads(block, x, mode, upstream):
    block.mode = mode
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = block(x)
    out.backward(upstream)
    params = {name: p.grad for name, p in block.named_parameters()}
    return out.detach(), x.grad, params


def _assert_tune_matches_eval(block, x, upstream):
    """Tune's output, input gradient and parameter gradients equal Eval's (float64); returns Eval's output."""
    eval_out, eval_dx, eval_grads = _grads(block, x, "eval", upstream)
    tune_out, tune_dx, tune_grads = _grads(block, x, "tune", upstream)
    assert rel_err(tune_out, eval_out) < 1e-10
    assert rel_err(tune_dx, eval_dx) < 1e-10
    assert set(tune_grads) == set(eval_grads)
    for name, grad in eval_grads.items():
        assert grad is not None and tune_grads[name] is not None, name
        assert rel_err(tune_grads[name], grad) < 1e-10, name
    return eval_out


@pytest.mark.parametrize("strategy", ["weight", "output"])
@pytest.mark.parametrize("dim,grouping,stride,dilation,bias,affine", GRID)
def test_modes_against_torch_reference(dim, grouping, stride, dilation, bias, affine, strategy):
    block, x, gen = _make_block(dim, grouping, stride, dilation, bias, affine, seed=len(GRID))
    block.tune_strategy = strategy
    block.eval()
    ref_conv, ref_bn = _reference(block)
    ref_bn.eval()
    with torch.no_grad():
        expected = ref_bn(ref_conv(x))
    upstream = torch.randn(expected.shape, generator=gen, dtype=torch.float64)

    eval_out = _assert_tune_matches_eval(block, x, upstream)
    assert rel_err(eval_out, expected) < 1e-12

    block.mode = "deploy"
    with torch.no_grad():
        deploy_out = block(x)
    assert rel_err(deploy_out, eval_out) < 1e-10
    block.mode = "eval"


@pytest.mark.parametrize("dim,grouping,stride,dilation,bias,affine", GRID[::3])
def test_train_mode_matches_torch_conv_bn(dim, grouping, stride, dilation, bias, affine):
    block, x, gen = _make_block(dim, grouping, stride, dilation, bias, affine, seed=7)
    ref_conv, ref_bn = _reference(block)
    block.train()
    ref_bn.train()
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    out = block(xa)
    expected = ref_bn(ref_conv(xb))
    assert rel_err(out, expected) < 1e-12
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(upstream)
    expected.backward(upstream)
    assert rel_err(xa.grad, xb.grad) < 1e-12
    assert rel_err(block.conv.weight.grad, ref_conv.weight.grad) < 1e-12
    assert torch.allclose(block.bn.running_mean, ref_bn.running_mean, rtol=1e-12, atol=0)
    assert torch.allclose(block.bn.running_var, ref_bn.running_var, rtol=1e-12, atol=0)
    assert block.bn.num_batches_tracked.item() == 1


def _linear_block(bias, affine, seed=3):
    gen = torch.Generator().manual_seed(seed)
    block = LinearBN(7, 5, bias=bias, affine=affine).double()
    randomize_bn_(block.bn, gen)
    x = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    return block, x, gen


@pytest.mark.parametrize("strategy", ["weight", "output"])
@pytest.mark.parametrize("bias,affine", list(itertools.product((True, False), (True, False))))
def test_linear_bn_modes(bias, affine, strategy):
    block, x, gen = _linear_block(bias, affine)
    block.tune_strategy = strategy
    ref_lin = nn.Linear(7, 5, bias=bias).double()
    ref_lin.load_state_dict(block.linear.state_dict())
    ref_bn = nn.BatchNorm1d(5, affine=affine).double()
    ref_bn.load_state_dict(block.bn.state_dict())
    ref_bn.eval()
    expected = ref_bn(ref_lin(x)).detach()
    upstream = torch.randn(expected.shape, generator=gen, dtype=torch.float64)

    eval_out = _assert_tune_matches_eval(block, x, upstream)
    assert rel_err(eval_out, expected) < 1e-12
    block.mode = "deploy"
    assert rel_err(block(x).detach(), eval_out) < 1e-10
    block.mode = "train"
    block.train()
    ref_bn.train()
    assert rel_err(block(x), ref_bn(ref_lin(x))) < 1e-12
    assert torch.allclose(block.bn.running_var, ref_bn.running_var, rtol=1e-12, atol=0)


def test_linear_bn_rejects_input_without_features_last():
    block = LinearBN(4, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\] \(features last\), got \(2, 4, 1\)"):
        block(torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match=r"got \(\)"):
        block(torch.tensor(1.0))


@pytest.mark.parametrize("strategy", ["weight", "output"])
@pytest.mark.parametrize("kind", ["conv2d", "conv1d_grouped", "linear"])
@pytest.mark.parametrize("with_bias,with_affine", [(True, True), (False, False), (False, True)])
def test_gradcheck_tune_function(kind, with_bias, with_affine, strategy):
    gen = torch.Generator().manual_seed(11)

    def rand(*shape, requires_grad=True):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)

    if kind == "conv2d":
        x, w = rand(2, 3, 5, 5), rand(4, 3, 3, 3)
        spec = OpSpec("conv", stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=1)
    elif kind == "conv1d_grouped":
        x, w = rand(2, 4, 7), rand(6, 2, 3)
        spec = OpSpec("conv", stride=(1,), padding=(2,), dilation=(2,), groups=2)
    else:
        x, w = rand(3, 5), rand(4, 5)
        spec = LINEAR
    c = w.shape[0]
    b = rand(c) if with_bias else None
    gamma = rand(c) if with_affine else None
    beta = rand(c) if with_affine else None
    mean = rand(c, requires_grad=False)
    var = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1

    def fn(x, w, b, gamma, beta):
        return TuneFunction.apply(x, w, b, gamma, beta, mean, var, 1e-5, spec, torch.float64, strategy)

    assert torch.autograd.gradcheck(fn, (x, w, b, gamma, beta))


@pytest.mark.parametrize("strategy", ["weight", "output"])
def test_tune_gradients_with_zero_gamma(strategy):
    block, x, gen = _make_block(2, "groups1", 1, 1, True, True, seed=5)
    block.tune_strategy = strategy
    with torch.no_grad():
        block.bn.weight[[0, 3]] = 0.0
    upstream = torch.randn(2, 6, 9, 8, generator=gen, dtype=torch.float64)
    _, eval_dx, eval_grads = _grads(block, x, "eval", upstream)
    _, tune_dx, tune_grads = _grads(block, x, "tune", upstream)
    assert eval_grads["bn.weight"][0] != 0  # gamma's gradient does not vanish with gamma
    assert (tune_grads["conv.bias"][[0, 3]] == 0).all()  # the bias of a zeroed channel has no effect
    assert rel_err(tune_dx, eval_dx) < 1e-10
    for name, grad in eval_grads.items():
        assert rel_err(tune_grads[name], grad) < 1e-10, name


def test_auto_strategy_scales_the_smaller_of_weight_and_output():
    spec = OpSpec("conv", stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    weight = torch.zeros(512, 512, 3, 3)
    assert choose_strategy(spec, torch.zeros(2, 512, 4, 4), weight, torch.float32) == "output"
    assert choose_strategy(spec, torch.zeros(8, 512, 56, 56), weight, torch.float32) == "weight"
    # under autocast the fold always happens on the weight, in float32
    assert choose_strategy(spec, torch.zeros(2, 512, 4, 4), weight, torch.bfloat16) == "weight"
    # an explicit request is honoured only where the output can be scaled in the parameters' dtype
    assert choose_strategy(spec, torch.zeros(8, 512, 56, 56), weight, torch.float32, "output") == "output"
    assert choose_strategy(spec, torch.zeros(2, 512, 4, 4), weight, torch.float32, "weight") == "weight"
    assert (
        choose_strategy(spec, torch.zeros(2, 512, 4, 4), weight.half(), torch.float16, "output") == "weight"
    )


@pytest.mark.parametrize("strategy", ["weight", "output"])
@pytest.mark.parametrize("frozen", [False, True])
def test_tune_without_gradients_equals_eval_and_builds_no_graph(strategy, frozen):
    """Under no_grad (validation) or with everything frozen, tune skips the autograd function."""
    block, x, _ = _make_block(2, "groups1", 2, 1, True, True, seed=9)
    block.tune_strategy = strategy
    block.mode = "eval"
    expected = block(x).detach()
    block.mode = "tune"
    if frozen:
        block.requires_grad_(False)
        out = block(x)
    else:
        with torch.no_grad():
            out = block(x)
    assert out.grad_fn is None
    assert rel_err(out, expected) < 1e-12
    # and with gradients wanted, the autograd function is used
    block.requires_grad_(True)
    assert type(block(x).grad_fn).__name__ == "TuneFunctionBackward"


@pytest.mark.parametrize("bias,affine", [(False, True), (True, True), (True, False), (False, False)])
def test_tune_weight_strategy_runs_deploys_operator_bitwise(bias, affine):
    """Tune folds with the same code that deploy writes into the parameters, so in float32 its forward
    is deploy's exactly, not just within round-off (with and without autograd)."""
    gen = torch.Generator().manual_seed(7)
    block = ConvBN(5, 6, 3, stride=2, bias=bias, affine=affine, mode="tune")
    randomize_bn_(block.bn, gen)
    block.tune_strategy = "weight"
    x = torch.randn(3, 5, 9, 9, generator=gen)
    tune_out = block(x)
    with torch.no_grad():
        tune_no_grad = block(x)
    block.mode = "deploy"
    deploy_out = block(x)
    assert torch.equal(tune_out, deploy_out)
    assert torch.equal(tune_no_grad, deploy_out)


def test_deploy_round_trip_restores_parameters_and_keeps_identity():
    torch.manual_seed(0)
    block = ConvBN(8, 16, 3, bias=True)
    randomize_bn_(block.bn, torch.Generator().manual_seed(5), wide=False)
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    ids = {name: id(p) for name, p in block.named_parameters()}
    keys = list(block.state_dict())
    block.mode = "eval"
    block.mode = "deploy"
    assert not torch.allclose(block.conv.weight, before["conv.weight"])  # folded in place
    assert list(block.state_dict()) == keys
    block.mode = "eval"
    for name, p in block.named_parameters():
        assert id(p) == ids[name]
        assert torch.equal(p, before[name]), name


def test_optimizer_built_before_switches_updates_live_parameters():
    torch.manual_seed(0)
    block = ConvBN(3, 4, 3)
    randomize_bn_(block.bn, torch.Generator().manual_seed(1), wide=False)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    x = torch.randn(2, 3, 6, 6)
    for mode in ("eval", "deploy", "tune", "eval"):
        block.mode = mode
        w = block.conv.weight.detach().clone()
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()
        assert not torch.equal(block.conv.weight, w), mode


@pytest.mark.parametrize("mode", ["train", "eval", "tune", "deploy"])
def test_checkpoint_saved_in_a_mode_loads_back_into_that_mode(mode):
    torch.manual_seed(0)
    block = ConvBN(4, 6, 3, bias=True, mode="eval")
    randomize_bn_(block.bn, torch.Generator().manual_seed(2), wide=False)
    block.mode = mode
    block.eval()
    x = torch.randn(2, 4, 8, 8)
    expected = block(x).detach()
    state = block.state_dict()
    fresh = ConvBN(4, 6, 3, bias=True, mode=mode)
    fresh.eval()
    fresh.load_state_dict(state)
    assert fresh.mode is Mode.parse(mode)
    assert rel_err(fresh(x), expected) < 1e-6
    # and the checkpoint is canonical: it loads into an eval-mode block too
    other = ConvBN(4, 6, 3, bias=True, mode="eval")
    other.load_state_dict(state)
    other.eval()
    assert rel_err(other(x), expected) < 1e-6


def test_deploy_state_dict_inside_a_parent_model():
    model = nn.Sequential(ConvBN(3, 4, 3), nn.ReLU(), ConvBN(4, 4, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_bn_(m, torch.Generator().manual_seed(3), wide=False)
    canonical = {k: v.clone() for k, v in model.state_dict().items()}
    for block in (model[0], model[2]):
        block.mode = "deploy"
    state = model.state_dict()
    assert list(state) == list(canonical)
    for key, value in canonical.items():
        assert rel_err(state[key], value) < 1e-6, key


def _frozen_case(freeze):
    torch.manual_seed(0)
    block = ConvBN(3, 5, 3, bias=True).double()
    randomize_bn_(block.bn, torch.Generator().manual_seed(4))
    for name in freeze:
        block.get_parameter(name).requires_grad_(False)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    upstream = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    return block, x, upstream


@pytest.mark.parametrize("freeze", [("conv.weight",), ("bn.weight", "bn.bias"), ("conv.weight", "conv.bias")])
def test_tune_with_frozen_parameters(freeze):
    block, x, upstream = _frozen_case(freeze)
    _, eval_dx, eval_grads = _grads(block, x, "eval", upstream)
    _, tune_dx, tune_grads = _grads(block, x, "tune", upstream)
    assert rel_err(tune_dx, eval_dx) < 1e-10
    for name in freeze:
        assert tune_grads[name] is None
    for name, grad in eval_grads.items():
        if name not in freeze:
            assert rel_err(tune_grads[name], grad) < 1e-10, name


def test_tune_under_cpu_autocast_bfloat16_folds_in_float32():
    torch.manual_seed(0)
    block = ConvBN(8, 8, 3, bias=True, mode="tune")
    randomize_bn_(block.bn, torch.Generator().manual_seed(6))
    x = torch.randn(2, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16
    # the fold is computed in float32 and only then rounded to bfloat16
    w, b = block.folded_weight_and_bias()
    expected = F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), padding=1)
    assert torch.equal(out, expected)
    # and stays close to the float32 result of eval mode
    block.mode = "eval"
    reference = block(x)
    assert rel_err(out.float(), reference) < 2e-2
    block.mode = "tune"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block(x.requires_grad_(True)).float().square().mean().backward()
    assert block.conv.weight.grad.dtype == torch.float32
    assert block.bn.weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32
    assert torch.isfinite(block.bn.weight.grad).all()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["train", "eval", "tune", "deploy"])
def test_every_mode_computes_in_autocasts_dtype_like_torchs_conv(mode, dims):
    torch.manual_seed(0)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](4, 6, 3, padding=1, bias=False)
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](6)
    randomize_bn_(bn, torch.Generator().manual_seed(3))
    x = torch.randn((2, 4) + (6,) * dims)
    with torch.no_grad():  # torch's own layers, before the block takes them over (deploy folds in place)
        reference = F.batch_norm(
            conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_out = conv(x)  # what autocast makes of torch's own convolution
    block = ConvBN.from_modules(conv, bn, mode=mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch_out.dtype == torch.bfloat16
    if mode == "deploy":  # the folded parameters, rounded to bfloat16 as autocast rounds any weight
        expected = conv._conv_forward(x.bfloat16(), block.conv.weight.bfloat16(), block.bn.bias.bfloat16())
        assert torch.equal(out, expected)
    if mode != "train":  # the same function as eval's in float32, to bfloat16's precision
        assert rel_err(out.float(), reference) < 2e-2


@pytest.mark.parametrize("strategy", ["weight", "output"])
def test_tune_channels_last(strategy):
    block, x, gen = _make_block(2, "groups1", 1, 1, True, True, seed=9)
    upstream = torch.randn(2, 6, 9, 8, generator=gen, dtype=torch.float64)
    _, eval_dx, eval_grads = _grads(block, x, "eval", upstream)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # the weight too, as model.to(memory_format=torch.channels_last) does
    block.to(memory_format=torch.channels_last)
    assert block.conv.weight.is_contiguous(memory_format=torch.channels_last)
    block.mode = "tune"
    block.tune_strategy = strategy
    block.zero_grad(set_to_none=True)
    x_cl.requires_grad_(True)
    out = block(x_cl)
    out.backward(upstream)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(x_cl.grad, eval_dx) < 1e-10
    for name, p in block.named_parameters():
        assert rel_err(p.grad, eval_grads[name]) < 1e-10, name


def test_tune_under_torch_compile():
    torch.manual_seed(0)
    block = ConvBN(3, 4, 3, bias=True)
    randomize_bn_(block.bn, torch.Generator().manual_seed(8), wide=False)
    x = torch.randn(2, 3, 8, 8)
    block.mode = "eval"
    expected = block(x)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    block.mode = "tune"
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert rel_err(out, expected) < 1e-5
    for p, g in zip(block.parameters(), expected_grads):
        assert rel_err(p.grad, g) < 1e-5


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
def test_tune_with_padding_modes(padding_mode):
    torch.manual_seed(0)
    block = ConvBN(3, 4, 3, padding_mode=padding_mode).double()
    randomize_bn_(block.bn, torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    upstream = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    eval_out = _assert_tune_matches_eval(block, x, upstream)
    block.mode = "deploy"
    assert rel_err(block(x).detach(), eval_out) < 1e-10


@pytest.mark.parametrize("padding,kernel", [("same", 4), ("same", 3), ("valid", 3), ((0, 2), 3)])
def test_tune_with_string_and_asymmetric_padding(padding, kernel):
    torch.manual_seed(0)
    block = ConvBN(3, 4, kernel, padding=padding).double()
    randomize_bn_(block.bn, torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        upstream = torch.randn(block(x).shape, dtype=torch.float64)
    _assert_tune_matches_eval(block, x, upstream)


def test_default_padding_keeps_size():
    block = ConvBN(2, 3, kernel_size=(3, 5), dilation=2)
    assert block.conv.padding == (2, 4)
    assert block(torch.randn(1, 2, 9, 9)).shape == (1, 3, 9, 9)


def test_block_used_twice_in_one_graph():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    twice = ConvBN(4, 4, 3).double()
    randomize_bn_(twice.bn, gen)
    results = {}
    for mode in ("eval", "tune"):
        twice.mode = mode
        twice.zero_grad(set_to_none=True)
        out = twice(torch.relu(twice(x)))
        out.square().sum().backward()
        results[mode] = [out.detach()] + [p.grad for p in twice.parameters()]
    for a, b in zip(results["tune"], results["eval"]):
        assert rel_err(a, b) < 1e-10


def test_unknown_mode_names_the_valid_ones():
    block = ConvBN(2, 2, 3)
    with pytest.raises(ValueError, match="train, eval, tune, deploy"):
        block.mode = "fast"
    with pytest.raises(ValueError, match="'Tuned'"):
        Mode.parse("Tuned")
    block.mode = "TUNE"
    assert block.mode is Mode.TUNE and block.mode == "tune"


@pytest.mark.parametrize("mode", ["tune", "deploy", "eval"])
def test_modes_needing_running_stats_refuse_bn_without_them(mode):
    block = ConvBN(2, 2, 3, track_running_stats=False)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        block.mode = mode
    block(torch.randn(2, 2, 4, 4))  # train mode still works


def test_deploy_refuses_zero_gamma():
    block = ConvBN(2, 3, 3, mode="eval")
    with torch.no_grad():
        block.bn.weight[1] = 0.0
    with pytest.raises(ValueError, match=r"channels \[1\]"):
        block.mode = "deploy"
    assert block.mode is Mode.EVAL


def test_from_modules_shares_parameters_and_validates():
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    block = ConvBN.from_modules(conv, bn, mode="tune")
    assert block.conv.weight is conv.weight and block.bn is bn
    with pytest.raises(ValueError, match="5 features"):
        ConvBN.from_modules(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        ConvBN.from_modules(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4))
    lin = LinearBN.from_modules(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert isinstance(lin, LinearBN)


def test_repr_shows_mode():
    assert "mode=tune" in repr(ConvBN(2, 2, 3, mode="tune"))


@pytest.mark.parametrize("mode", ["train", "eval", "tune", "deploy"])
def test_forward_takes_its_argument_by_name_as_torch_layers_do(mode):
    torch.manual_seed(0)
    conv_block, linear_block = ConvBN(3, 4, 3, mode=mode), LinearBN(3, 4, mode=mode)
    for block, x in ((conv_block, torch.randn(2, 3, 5, 5)), (linear_block, torch.randn(2, 3))):
        block.eval()
        assert torch.equal(block(input=x), block(x))
        block.op(input=x)  # the name nn.Conv2d and nn.Linear use


def test_double_backward_through_tune_names_tune_mode_and_suggests_eval():
    block, x, _ = _make_block(2, "groups1", 1, 1, True, True, seed=3)
    x = x.requires_grad_(True)
    for mode in ("eval", "tune"):
        block.mode = mode
        (grad_x,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
        if mode == "eval":
            expected = grad_x.detach()
            torch.autograd.grad(grad_x.sum(), block.conv.weight)  # eval's graph is twice differentiable
    assert rel_err(grad_x, expected) < 1e-10  # the first derivative is still right
    with pytest.raises(RuntimeError, match="tune mode cannot be differentiated twice.*mode 'eval'"):
        grad_x.sum().backward()
    # also where the upstream gradient needs no gradient itself (out.sum())
    (grad_w,) = torch.autograd.grad(block(x).sum(), block.conv.weight, create_graph=True)
    with pytest.raises(RuntimeError, match="tune mode cannot be differentiated twice"):
        torch.autograd.grad(grad_w.sum(), x)
