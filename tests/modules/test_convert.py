"""convert_convbn on small models built for each case: what converts, what is left and why, checkpoints,
verification and restore, the meta device."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import randomize_all_bn_, rel_err
from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)
from tests.modules.conftest import assert_gradients_close, gradients
from tllib_tune import ConvBN, LinearBN, convert_convbn, get_modes, inspect_convbn, set_mode, using_mode
from tllib_tune.modules.convbn import ConvBNBase
from tllib_tune.modules.convert import ConversionReport, MovedBatchNorm

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _input(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


class Shapes(nn.Module):
    """Plain, depthwise-dilated and grouped-strided convolutions, each followed by its BatchNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = CONV[dim](3, 8, 3, padding=1, bias=True), BN[dim](8)
        self.conv2, self.bn2 = CONV[dim](8, 8, 3, padding=2, dilation=2, groups=8, bias=False), BN[dim](8)
        self.conv3, self.bn3 = CONV[dim](8, 6, 3, stride=2, groups=2, padding_mode="reflect"), BN[dim](6)
        self.bn3.affine = True

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_kinds_convert_and_match_torch_in_every_mode(dim):
    torch.manual_seed(dim)
    model = randomize_all_bn_(Shapes(dim).double(), seed=dim).eval()
    original = copy.deepcopy(model)
    x = _input(2, 3, *(9,) * dim, dtype=torch.float64)
    expected_keys = list(model.state_dict())
    model, report = convert_convbn(model, x, return_report=True)
    assert report.converted == [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")] and not report.left
    assert "bitwise" in report.verified
    assert all(isinstance(getattr(model, f"conv{i}"), ConvBN) for i in (1, 2, 3))
    assert all(isinstance(getattr(model, f"bn{i}"), MovedBatchNorm) for i in (1, 2, 3))
    assert list(model.state_dict()) == expected_keys
    reference = gradients(original, x)
    for mode in ("train", "eval", "tune", "deploy"):  # deploy trains the folded weights: other gradients
        assert_gradients_close(gradients(model, x, mode), reference, 1e-10, params=mode != "deploy")
    assert get_modes(model) == {"deploy": 3}


def test_state_dict_loads_strictly_both_ways_in_every_mode():
    torch.manual_seed(0)
    original = randomize_all_bn_(Shapes(2), seed=0).eval()
    model = convert_convbn(copy.deepcopy(original), _input(2, 3, 8, 8))
    expected = original.state_dict()
    for mode in ("train", "tune", "deploy"):
        set_mode(model, mode)
        state = model.state_dict()
        assert list(state) == list(expected)
        assert max(rel_err(state[k].float(), expected[k].float()) for k in expected) <= 1e-6
        fresh = Shapes(2)
        fresh.load_state_dict(state)  # strict: a converted checkpoint loads into the unconverted model
        model.load_state_dict(expected)  # and the original's into the converted one, in its mode
        assert get_modes(model) == {mode: 3}
    set_mode(model, "train")  # deploy refolded the loaded values: round-off only
    assert max(rel_err(model.state_dict()[k].float(), v.float()) for k, v in expected.items()) <= 1e-6


def test_train_mode_updates_running_stats_like_the_original():
    torch.manual_seed(0)
    original = Shapes(2)
    model = convert_convbn(copy.deepcopy(original), _input(2, 3, 8, 8))
    x = _input(4, 3, 8, 8, seed=3)
    assert model.training and model.conv1.training
    assert torch.equal(model(x), original(x))  # batch statistics, running stats updated in both
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.state_dict().items())


def test_linear_bn_mlp_becomes_linearbn_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3, bias=False), nn.BatchNorm1d(3)
    )
    model = randomize_all_bn_(model.double(), seed=0).eval()
    original = copy.deepcopy(model)
    x = _input(4, 5, dtype=torch.float64)
    model, report = convert_convbn(model, return_report=True)  # default input: 2 x in_features
    assert report.converted == [("0", "1"), ("3", "4")]
    assert isinstance(model[0], LinearBN) and isinstance(model[4], MovedBatchNorm)
    assert_gradients_close(gradients(model, x, "tune"), gradients(original, x), 1e-10)


class SharedHead(nn.Module):
    """One conv and one BN applied to every level, as RetinaNet/FCOS heads do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, levels):
        return [F.relu(self.bn(self.conv(x))) for x in levels]


def test_conv_called_several_times_each_into_the_same_bn_converts():
    model = randomize_all_bn_(SharedHead()).eval()
    levels = [_input(1, 3, s, s, seed=s) for s in (8, 4, 2)]
    with torch.no_grad():
        expected = model(levels)
    model, report = convert_convbn(model, levels, return_report=True)
    assert report.converted == [("conv", "bn")]
    with torch.no_grad(), using_mode(model, "tune"):
        actual = model(levels)
    assert all(rel_err(a, e) <= 1e-5 for a, e in zip(actual, expected))


class Branches(nn.Module):
    """One of every pattern that must stay: each BatchNorm here does not follow a conv exclusively."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)  # the one exclusive pair
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.after_cat, self.after_add = nn.BatchNorm2d(8), nn.BatchNorm2d(4)
        self.after_act, self.after_bn, self.after_pool = (
            nn.BatchNorm2d(4),
            nn.BatchNorm2d(4),
            nn.BatchNorm2d(4),
        )
        self.used_twice, self.twice_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.shared_bn = nn.BatchNorm2d(4)  # fed by conv a, then by conv b
        self.unused_bn = nn.BatchNorm2d(4)  # a training-only branch
        self.no_stats = nn.BatchNorm2d(4, track_running_stats=False)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.stem_bn(self.stem(x))
        a, b = self.a(x), self.b(x)
        y = self.after_cat(torch.cat([a, b], 1))[:, :4] + self.after_add(a + b)
        y = y + self.after_act(F.relu(x)) + self.after_pool(F.max_pool2d(x, 3, 1, 1))
        y = y + self.after_bn(self.stem_bn(x))
        t = self.used_twice(y)
        y = self.twice_bn(t) + t
        y = self.shared_bn(self.a(y)) + self.shared_bn(self.b(y))
        if self.training:
            y = self.unused_bn(y)
        return self.no_stats(self.c(y))


def test_what_is_left_is_reported_with_one_reason_each():
    model = Branches()
    report = inspect_convbn(model, _input(2, 3, 6, 6))
    reasons = {item.name: item.reason for item in report.left}
    assert report.total == 10 and report.converted == []  # stem_bn is also called after a BatchNorm
    assert "concat (CatBackward0)" in reasons["after_cat"]
    assert "add (AddBackward0)" in reasons["after_add"]
    assert "activation (ReluBackward0)" in reasons["after_act"]
    assert "pooling" in reasons["after_pool"]
    assert "another normalization" in reasons["after_bn"]
    assert reasons["twice_bn"] == "its convolution's output also feeds other operations"
    assert reasons["shared_bn"] == "it is fed by several convolutions"
    assert "never called" in reasons["unused_bn"]
    assert "track_running_stats=False" in reasons["no_stats"]
    assert "follows a BatchNorm" not in reasons["stem_bn"] and "normalization" in reasons["stem_bn"]
    assert model.training  # flags restored after the eval-mode probe
    summary = report.summary()
    assert summary.startswith("converted 0 of 10 BatchNorms into ConvBN/LinearBN blocks; left 10:")
    assert len(summary.splitlines()) == 1 + len(report.reasons())


def test_conv_whose_output_also_leaves_the_model_or_feeds_two_bns_is_left():
    class Out(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.bn2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            z = self.conv2(x)
            return self.bn(y), y, self.bn2(self.conv2(z[:, :3]))

    report = inspect_convbn(Out(), _input(1, 3, 4, 4))
    reasons = {item.name: item.reason for item in report.left}
    assert reasons == {
        "bn": "its convolution's output also feeds other operations",
        "bn2": "its convolution is also called without it",
    }


def test_in_place_op_between_conv_and_bn_is_left():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            y.mul_(2)
            return self.bn(y)

    (left,) = inspect_convbn(InPlace(), _input(1, 3, 4, 4)).left
    assert left.name == "bn" and "in-place operation" in left.reason


def _conv_bn(channels=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "decorate, expected",
    [
        (lambda m: m[0].register_forward_hook(lambda *a: None), "its convolution has a forward hook,"),
        (lambda m: m[1].register_forward_pre_hook(lambda *a: None), "it has a forward pre-hook,"),
        (lambda m: m[0].register_full_backward_hook(lambda *a: None), "its convolution has a backward hook,"),
        (lambda m: nn.utils.spectral_norm(m[0]), "has a forward pre-hook (torch.nn.utils.spectral_norm)"),
        (lambda m: nn.utils.weight_norm(m[0]), "has a forward pre-hook (torch.nn.utils.weight_norm)"),
        (lambda m: nn.utils.parametrizations.weight_norm(m[0]), "computed by a parametrization"),
    ],
    ids=["forward-hook", "bn-pre-hook", "backward-hook", "spectral_norm", "weight_norm", "parametrize"],
)
def test_hooked_or_reparametrized_modules_are_left_with_the_reason(decorate, expected):
    model = _conv_bn()
    decorate(model)
    keys = list(model.state_dict())
    model, report = convert_convbn(model, _input(1, 3, 4, 4), return_report=True)
    (left,) = report.left
    assert left.name == "1" and left.op == "0" and expected in left.reason
    assert isinstance(model[1], nn.BatchNorm2d) and list(model.state_dict()) == keys


def test_transposed_conv_linear_on_3d_and_flattened_linear_are_left():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.up_bn = nn.ConvTranspose2d(3, 4, 2, stride=2), nn.BatchNorm2d(4)
            self.seq, self.seq_bn = nn.Linear(4, 5), nn.BatchNorm1d(5)  # LeViT's bn(x.flatten(0, 1))
            self.lin3d, self.lin3d_bn = nn.Linear(4, 6), nn.BatchNorm1d(2)  # normalizes dim 1

        def forward(self, x):
            tokens = self.up_bn(self.up(x)).flatten(2).transpose(1, 2)  # [N, L, 4]
            y = self.seq(tokens)
            y = self.seq_bn(y.flatten(0, 1)).reshape_as(y)
            return y, self.lin3d_bn(self.lin3d(tokens[:, :2]))

    reasons = {i.name: i.reason for i in inspect_convbn(Odd(), _input(2, 3, 1, 1)).left}
    assert "ConvTranspose2d (torch.nn.modules.conv) is a transposed convolution" in reasons["up_bn"]
    assert "dim 1 of a Linear's [N, L, C] output" in reasons["lin3d_bn"]
    assert "seq_bn" not in reasons  # LinearBN normalises a [..., C] output as BatchNorm1d did [N, C]


def test_strict_raises_listing_what_is_left_and_changes_nothing():
    model = Branches()
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=r"strict=True.*10 BatchNorm.*after_cat: it follows a concat"):
        convert_convbn(model, _input(2, 3, 6, 6), strict=True)
    assert list(model.state_dict()) == keys and not any(isinstance(m, ConvBNBase) for m in model.modules())
    assert convert_convbn(_conv_bn(), _input(1, 3, 4, 4), strict=True)[0].__class__ is ConvBN


def test_converting_twice_converts_nothing_and_says_so(capsys, caplog):
    model = convert_convbn(nn.Sequential(_conv_bn(), _conv_bn(4)), _input(1, 3, 4, 4))
    with caplog.at_level(logging.INFO, logger="tllib_tune.modules.convert"):
        _, report = convert_convbn(model, _input(1, 3, 4, 4), verbose=True, return_report=True)
    assert report.converted == [] and report.left == [] and report.already == 2
    expected = "converted 0 of 0 BatchNorms into ConvBN/LinearBN blocks (the model already had 2 blocks)"
    assert capsys.readouterr().out.strip() == expected + "; nothing to convert"
    assert expected in caplog.text


def test_a_model_without_batchnorm_reports_zero():
    report = inspect_convbn(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    assert report == ConversionReport() and report.summary().endswith("nothing to convert")
    assert convert_convbn(nn.Linear(2, 2)).__class__ is nn.Linear


def test_a_failed_verification_restores_the_model_and_names_the_pair(monkeypatch):
    model = nn.Sequential(_conv_bn(), _conv_bn(4))
    model[1][0] = nn.Conv2d(4, 4, 3, padding=1)
    original_forward = ConvBNBase.forward

    def wrong_for_one(self, x):  # a block that computes something else, for the second pair only
        out = original_forward(self, x)
        return out + 1 if self.conv is model_convs[1] else out

    model_convs = [model[0][0], model[1][0]]
    monkeypatch.setattr(ConvBNBase, "forward", wrong_for_one)
    x = _input(1, 3, 4, 4)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    keys = list(model.state_dict())
    with pytest.raises(
        RuntimeError, match=r"outputs differ.*restored.*Pairs at fault: 1\.0 -> 1\.1 .*exclude=\['1\.0'\]"
    ):
        convert_convbn(model, x)
    assert model[0][0] is model_convs[0] and model[1][0] is model_convs[1] and model.training
    assert (
        list(model.state_dict()) == keys and not model[0]._state_dict_hooks and not model[1]._state_dict_hooks
    )
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)
    model, report = convert_convbn(model, x, exclude="1.*", return_report=True)
    assert report.converted == [("0.0", "0.1")] and report.left[0].reason == "excluded by exclude="


def test_a_conv_called_through_another_reference_fails_verification():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.__dict__["layers"] = [self.conv, self.bn]  # a plain list: conversion cannot see it

        def forward(self, x):
            return self.layers[1](self.layers[0](x))

    model = Aliased()
    with pytest.raises(RuntimeError, match="does not call the block at conv"):
        convert_convbn(model, _input(1, 3, 4, 4))
    assert isinstance(model.conv, nn.Conv2d)


class Nested(nn.Module):
    """The BatchNorm registered before its conv, and a pair split across sub-modules."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(3, 4, 1)
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(4, 5, 1)), nn.ReLU())
        self.post = nn.ModuleDict({"norm": nn.BatchNorm2d(5)})
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.post["norm"](self.body[0](self.bn(self.conv(x)))).mean((2, 3)))


def test_key_order_and_checkpoints_survive_odd_layouts_save_and_deepcopy():
    torch.manual_seed(0)
    original = randomize_all_bn_(Nested(), seed=0).eval()
    model = convert_convbn(copy.deepcopy(original), _input(2, 3, 4, 4))
    assert isinstance(model.body[0][0], ConvBN) and isinstance(model.post["norm"], MovedBatchNorm)
    expected = original.state_dict()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [torch.load(buffer, weights_only=False), copy.deepcopy(model)]
    x = _input(2, 3, 4, 4, seed=5)
    for m in [model] + copies:
        assert list(m.state_dict()) == list(expected)
        set_mode(m, "deploy")
        assert list(m.state_dict()) == list(expected)
        m.load_state_dict(expected)
        with torch.no_grad():
            assert rel_err(m(x), original(x)) <= 1e-5
    assert copies[1].post["norm"].weight is copies[1].body[0][0].bn.weight  # the copy's own BatchNorm


def test_placeholder_answers_for_its_batchnorm_and_module_methods_stay_natural():
    model = convert_convbn(_conv_bn(), _input(1, 3, 4, 4))
    block, placeholder = model[0], model[1]
    assert placeholder.weight is block.bn.weight and placeholder.num_features == 4
    assert list(placeholder.parameters()) == [] and list(placeholder.buffers()) == []
    assert [name for name, _ in model.named_modules()] == ["", "0", "0.conv", "0.bn", "1", "2"]
    model.eval()
    assert not block.bn.training and not placeholder.training
    model.double()
    assert (
        block.conv.weight.dtype == torch.float64
        and model.state_dict()["1.running_var"].dtype == torch.float64
    )
    model.half()
    assert all(v.dtype in (torch.float16, torch.int64) for v in model.state_dict().values())


def test_training_flags_are_kept_and_given_to_the_new_blocks(monkeypatch):
    model = nn.Sequential(_conv_bn(), _conv_bn(4))
    model[1].eval()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # verification runs without it, then back
    model = convert_convbn(model, _input(1, 3, 4, 4))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert model.training and model[0][0].training and model[0][0].bn.training
    assert not model[1][0].training and not model[1][0].bn.training and not model[1][1].training


def test_default_input_and_the_error_when_the_model_needs_one():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x, y):
            return self.bn(self.conv(x + y))

    with pytest.raises(
        ValueError, match=r"TwoInputs needs example_input= .*\[2, 3, 64, 64\].*e\.g\. convert_convbn"
    ):
        convert_convbn(TwoInputs())
    x = _input(1, 3, 4, 4)
    assert inspect_convbn(TwoInputs(), (x, x)).converted == [("conv", "bn")]  # a tuple: positional arguments
    with pytest.raises(ValueError, match=r"TwoInputs failed on example_input"):
        convert_convbn(TwoInputs(), x)
    volumes = nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4))
    assert inspect_convbn(volumes).converted == [("0", "1")]


def test_the_meta_device_finds_pairs_without_computing():
    with torch.device("meta"):
        model = Nested()
    model, report = convert_convbn(model, torch.empty(2, 3, 4, 4, device="meta"), return_report=True)
    assert report.converted == [("conv", "bn"), ("body.0.0", "post.norm")]
    assert report.verified.startswith("structure only (meta device")
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    original = randomize_all_bn_(Nested(), seed=0).eval()
    model.load_state_dict(original.state_dict())
    x = _input(2, 3, 4, 4)
    with torch.no_grad(), using_mode(model.eval(), "tune"):
        assert rel_err(model(x), original(x)) <= 1e-5


def test_inference_mode_inputs_and_context_do_not_hide_the_graph():
    model = _conv_bn()
    with torch.inference_mode():
        x = _input(1, 3, 4, 4).clone()
        assert inspect_convbn(model, x).converted == [("0", "1")]
    assert convert_convbn(_conv_bn(), x)[0].__class__ is ConvBN
