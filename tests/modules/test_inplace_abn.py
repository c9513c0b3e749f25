"""In-Place ABN: the fused function against torch's own BatchNorm + leaky ReLU, and the model converter."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import randomize_all_bn_, rel_err
from tllib_tune import ConvBN
from tllib_tune.modules.inplace_abn import (
    ConvInPlaceABN,
    InPlaceABN,
    convert_to_inplace_abn,
    count_inplace_abn,
    inplace_abn,
)
from tllib_tune.utils.memory import SavedTensorMeter, activation_bytes

EPS = 1e-5
SHAPES = {2: (6, 3), 3: (3, 3, 5), 4: (2, 3, 4, 5)}


def _reference(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=EPS, slope=0.01):
    """In-Place ABN composed of torch ops: BatchNorm with weight |w| + eps, then leaky ReLU."""
    gain = None if weight is None else weight.abs() + eps
    out = F.batch_norm(x, running_mean, running_var, gain, bias, training, momentum, eps)
    return F.leaky_relu(out, slope)


def _inputs(ndim, dtype=torch.float64, affine=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[ndim]
    c = shape[1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype).requires_grad_()
    w = b = None
    if affine:
        sign = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
        w = (sign * (0.2 + torch.rand(c, generator=gen, dtype=torch.float64))).to(dtype).requires_grad_()
        b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    rm = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    rv = (0.5 + torch.rand(c, generator=gen, dtype=torch.float64)).to(dtype)
    return x, w, b, rm, rv


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ndim", [2, 3, 4])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_function_equals_torch_ops_float64(training, ndim, affine):
    x, w, b, rm, rv = _inputs(ndim, affine=affine)
    rm_ref, rv_ref, rm_before = rm.clone(), rv.clone(), rm.clone()
    out = inplace_abn(x * 1, w, b, rm, rv, training, 0.1, EPS, 0.01)
    ref = _reference(x * 1, w, b, rm_ref, rv_ref, training)
    assert rel_err(out, ref) < 1e-13
    leaves = [t for t in (x, w, b) if t is not None]
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for g, r in zip(got, want):
        assert rel_err(g, r) < 1e-12
    # running statistics: PyTorch's momentum convention and unbiased variance (unchanged in eval)
    assert rel_err(rm, rm_ref) < 1e-14 and rel_err(rv, rv_ref) < 1e-14
    assert torch.equal(rm, rm_before) != training


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ndim", [2, 4])
def test_gradcheck_float64(training, ndim):
    x, w, b, rm, rv = _inputs(ndim)

    # The function overwrites its input: hand it a fresh non-leaf copy on every call.
    def fn(x, w, b):
        return inplace_abn(x.clone(), w, b, rm.clone(), rv.clone(), training, 0.1, EPS, 0.01)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_float32_and_bfloat16_follow_the_reference():
    x, w, b, rm, rv = _inputs(4, dtype=torch.float32)
    out = inplace_abn(x * 1, w, b, rm.clone(), rv.clone(), True)
    ref = _reference(x * 1, w, b, rm.clone(), rv.clone(), True)
    assert rel_err(out, ref) < 1e-6
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    rx, rw = torch.autograd.grad(ref.sum(), (x, w))
    assert rel_err(gx, rx) < 1e-4 and rel_err(gw, rw) < 1e-5
    xb = (x.detach() * 1).bfloat16().requires_grad_()
    out = inplace_abn(xb * 1, w, b, rm.clone(), rv.clone(), True)
    assert out.dtype == torch.bfloat16
    ref = _reference(xb.float(), w, b, rm.clone(), rv.clone(), True)
    assert rel_err(out, ref) < 1e-2
    (gxb,) = torch.autograd.grad(out.float().sum(), (xb,))
    assert gxb.dtype == torch.bfloat16 and torch.isfinite(gxb).all()


def test_writes_in_place_and_saves_only_output_and_per_channel_tensors():
    x, w, b, rm, rv = _inputs(4)
    h = x * 1
    ptr, version = h.data_ptr(), h._version
    with SavedTensorMeter(exclude=[w, b, rm, rv]) as meter:
        out = inplace_abn(h, w, b, rm, rv, True)
    assert out.data_ptr() == ptr and out is h and h._version > version
    c = x.shape[1]
    # the output (the input's own storage) plus the per-channel inverse standard deviation
    assert meter.bytes == h.numel() * h.element_size() + c * 8
    assert meter.num_tensors == 2
    out.sum().backward()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_batchnorm_then_leaky_relu(momentum):
    gen = torch.Generator().manual_seed(3)
    bn = nn.BatchNorm2d(3, momentum=momentum).double()
    abn = InPlaceABN(3, momentum=momentum).double()
    assert set(abn.state_dict()) == set(bn.state_dict())  # pretrained statistics carry over by name
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        abn.weight.copy_(bn.weight - EPS)  # scale |w| + eps equals BatchNorm's w
        abn.bias.copy_(torch.randn(3, generator=gen))
        bn.bias.copy_(abn.bias)
    for step in range(3):
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        ref = F.leaky_relu(bn(x), 0.01)
        out = abn(x.clone())
        assert rel_err(out, ref) < 1e-13, step
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert rel_err(getattr(abn, name), getattr(bn, name)) < 1e-14, name
    bn.eval()
    abn.eval()
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    assert rel_err(abn(x.clone()), F.leaky_relu(bn(x), 0.01)) < 1e-13
    assert abn.num_batches_tracked.item() == 3


def test_module_without_running_stats_and_identity_activation():
    x, w, b, _, _ = _inputs(4)
    abn = InPlaceABN(3, track_running_stats=False, activation="identity").double().eval()
    with torch.no_grad():
        abn.weight.copy_(w)
        abn.bias.copy_(b)
    out = abn(x.detach() * 1)
    ref = F.batch_norm(x.detach(), None, None, w.abs() + EPS, b, True, 0.1, EPS)
    assert rel_err(out, ref) < 1e-13
    assert "activation=identity" in repr(abn)


@pytest.mark.parametrize("slope", [0.0, -0.1, float("nan")])
def test_non_invertible_slope_is_refused(slope):
    with pytest.raises(ValueError, match="no inverse"):
        InPlaceABN(4, activation_param=slope)
    x, w, b, rm, rv = _inputs(4)
    with pytest.raises(ValueError, match="leaky_relu"):
        inplace_abn(x * 1, w, b, rm, rv, True, activation_param=slope)


def test_relu_and_unsupported_activations_are_refused():
    with pytest.raises(ValueError, match="ReLU has no inverse.*silently wrong"):
        InPlaceABN(4, activation="relu")
    with pytest.raises(ValueError, match="'elu' is not supported"):
        InPlaceABN(4, activation="elu")


def test_bad_inputs_are_refused():
    abn = InPlaceABN(3)
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="leaf tensor that requires grad.*output of a convolution"):
        abn(leaf)
    with pytest.raises(ValueError, match="view of a leaf"):
        abn(leaf[:, :, :2])
    assert torch.isfinite(leaf).all()
    with pytest.raises(ValueError, match="built for 3 channels but the input has 4"):
        abn(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        abn(torch.randn(1, 3))
    with pytest.raises(TypeError, match="floating-point"):
        abn(torch.ones(2, 3, 2, dtype=torch.long))


def test_input_saved_by_another_op_raises_at_backward():
    abn = InPlaceABN(3)
    h = torch.randn(2, 3, 4, 4, requires_grad=True) * 1
    side = h.sin()  # saves h for its backward
    out = abn(h)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out.sum() + side.sum()).backward()


# --- the converter --------------------------------------------------------------------------------


class ToyBottleneck(nn.Module):
    """A bottleneck following the zoo's convention: conv3's output meets the residual before act3."""

    inplace_abn_pairs = (("conv1", "act1"), ("conv2", "act2"))

    def __init__(self, channels: int, mid: int, conv_bias: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvBN(channels, mid, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(mid, mid, 3, bias=conv_bias)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = ConvBN(mid, channels, 1)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.act1(self.conv1(x))
        out = self.act2(self.conv2(out))
        return self.act3(self.conv3(out) + x)


class ToyNet(nn.Module):
    inplace_abn_pairs = (("conv1", "act1"),)

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, width, 3, stride=2)
        self.act1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer = nn.Sequential(ToyBottleneck(width, 4, conv_bias=True), ToyBottleneck(width, 4))
        # the generic fallback: a plain Sequential; a LeakyReLU keeps its slope
        self.head = nn.Sequential(ConvBN(width, width, 3), nn.LeakyReLU(0.2), ConvBN(width, width, 1))

    def forward(self, x):
        return self.head(self.layer(self.pool(self.act1(self.conv1(x)))))


def _toy_pair(dtype=torch.float64, seed=0):
    """(model, its reference with the converted ReLUs as LeakyReLU(0.01), input)."""
    torch.manual_seed(seed)
    model = randomize_all_bn_(ToyNet().to(dtype), seed=seed, wide=True)  # some gamma < 0
    reference = copy.deepcopy(model)
    reference.act1 = nn.LeakyReLU(0.01)
    for block in reference.layer:
        block.act1, block.act2 = nn.LeakyReLU(0.01), nn.LeakyReLU(0.01)
    x = torch.randn(2, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    return model, reference, x


def _converted_pairs(converted, reference):
    """(ConvInPlaceABN, the reference's ConvBN) for every converted position."""
    ref_modules = dict(reference.named_modules())
    return [(m, ref_modules[n]) for n, m in converted.named_modules() if isinstance(m, ConvInPlaceABN)]


def test_converter_replaces_exactly_the_declared_pairs():
    model, _, _ = _toy_pair()
    negative = sum(int((m.bn.weight < 0).sum()) for m in model.modules() if isinstance(m, ConvBN))
    assert negative > 0
    assert convert_to_inplace_abn(model) is model
    assert count_inplace_abn(model) == 6  # stem, 2 x (conv1, conv2), head[0]
    assert isinstance(model.conv1, ConvInPlaceABN) and isinstance(model.act1, nn.Identity)
    for block in model.layer:
        assert isinstance(block.conv1, ConvInPlaceABN) and isinstance(block.act2, nn.Identity)
        assert isinstance(block.conv3, ConvBN) and isinstance(block.act3, nn.ReLU)  # residual in between
    assert isinstance(model.head[0], ConvInPlaceABN) and isinstance(model.head[2], ConvBN)
    assert model.head[0].abn.activation_param == 0.2
    assert model.conv1.abn.activation_param == 0.01
    assert all((m.weight > 0).all() for m in model.modules() if isinstance(m, InPlaceABN))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert_to_inplace_abn(model)  # again: nothing changes
    assert count_inplace_abn(model) == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_converted_model_equals_reference_composition(training):
    model, reference, x = _toy_pair()
    model.layer[1].conv2.mode = "deploy"  # a folded block is unfolded before conversion
    convert_to_inplace_abn(model)
    model.train(training)
    reference.train(training)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = model(xa), reference(xr)
    assert rel_err(out, ref) < 1e-12
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert rel_err(xa.grad, xr.grad) < 1e-11
    pairs = _converted_pairs(model, reference)
    assert len(pairs) == 6
    for conv_abn, convbn in pairs:
        abn, bn, conv = conv_abn.abn, convbn.bn, conv_abn.conv
        sign = torch.sign(bn.weight.detach())
        # the sign of a negative gamma moved into the convolution's output channel and the running mean
        assert rel_err(conv.weight.grad, convbn.conv.weight.grad * sign.view(-1, 1, 1, 1)) < 1e-11
        if conv.bias is not None:
            # (zero up to round-off in train: BatchNorm removes the bias)
            torch.testing.assert_close(conv.bias.grad, convbn.conv.bias.grad * sign, rtol=1e-10, atol=1e-12)
        assert rel_err(abn.weight.grad, bn.weight.grad * sign) < 1e-11
        assert rel_err(abn.bias.grad, bn.bias.grad) < 1e-11
        assert rel_err(abn.running_mean, bn.running_mean * sign) < 1e-14
        assert rel_err(abn.running_var, bn.running_var) < 1e-14
        assert abn.num_batches_tracked.item() == bn.num_batches_tracked.item() == int(training)
    for name, p in reference.named_parameters():  # the untouched layers train identically
        if ".conv3." in name or name.startswith("head.2"):
            assert rel_err(dict(model.named_parameters())[name].grad, p.grad) < 1e-11


def test_converted_model_saves_less_activation_memory_in_train_mode():
    model, _, x = _toy_pair(dtype=torch.float32)
    converted = convert_to_inplace_abn(copy.deepcopy(model))
    model.train()
    converted.train()
    original = activation_bytes(model, x.clone())
    inplace = activation_bytes(converted, x.clone())
    # every converted pair keeps one activation (its output) instead of two (conv output, BN output)
    shapes = [(8, 16, 16)] + [(4, 8, 8)] * 4 + [(8, 8, 8)]  # stem; bottlenecks and head after the pool
    one_activation_per_pair = sum(x.shape[0] * c * h * w * 4 for c, h, w in shapes)
    assert inplace < original
    assert original - inplace >= one_activation_per_pair


def test_converter_errors():
    with pytest.raises(ValueError, match="found nothing to convert.*inplace_abn_pairs"):
        convert_to_inplace_abn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    plain = nn.Sequential(ConvBN(3, 4, 3), nn.SiLU())
    assert convert_to_inplace_abn(plain, strict=False) is plain and count_inplace_abn(plain) == 0

    class Missing(nn.Module):
        inplace_abn_pairs = (("conv1", "act9"),)

        def __init__(self):
            super().__init__()
            self.conv1, self.act1 = ConvBN(3, 4, 3), nn.ReLU()

    with pytest.raises(TypeError, match="'act9'.*no such child"):
        convert_to_inplace_abn(Missing())

    class NotConvBN(Missing):
        inplace_abn_pairs = (("act1", "conv1"),)

    with pytest.raises(TypeError, match="'act1' is ReLU, not a ConvBN"):
        convert_to_inplace_abn(NotConvBN())

    class WrongAct(Missing):
        inplace_abn_pairs = (("conv1", "act1"),)

        def __init__(self):
            super().__init__()
            self.act1 = nn.GELU()

    with pytest.raises(TypeError, match="expected an nn.ReLU or nn.LeakyReLU.*GELU"):
        convert_to_inplace_abn(WrongAct())
    with pytest.raises(ValueError, match="no inverse"):
        convert_to_inplace_abn(ToyNet(), activation_param=0.0)


def test_channels_last_input():
    x, w, b, _, _ = _inputs(4)
    h = (x * 1).contiguous(memory_format=torch.channels_last)
    out = inplace_abn(h, w, b, None, None, True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = _reference(x * 1, w, b, None, None, True)
    assert rel_err(out, ref) < 1e-13
    grads = torch.autograd.grad(out, (x, w, b), torch.ones_like(ref))
    for g, r in zip(grads, torch.autograd.grad(ref, (x, w, b), torch.ones_like(ref))):
        assert rel_err(g, r) < 1e-12
