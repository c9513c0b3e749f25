"""Hooks and parametrizations on a block's operator and BatchNorm: each mode computes what the same block
computes in eval mode (which calls the operator itself), or refuses with the reason."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from tests.conftest import randomize_bn_, rel_err
from tllib_tune import ConvBN, Mode
from tllib_tune.modules.convbn import convbn_unsupported_reason


def _hook_weight_norm(conv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        return torch.nn.utils.weight_norm(conv)


WEIGHT_TRANSFORMS = {
    "hook spectral_norm": torch.nn.utils.spectral_norm,
    "hook weight_norm": _hook_weight_norm,
    "parametrize spectral_norm": parametrizations.spectral_norm,
    "parametrize weight_norm": parametrizations.weight_norm,
}


def _block(transform=None, seed=0):
    """The same float64 block for the same seed (spectral norm's random start vector included)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    if transform is not None:
        conv = WEIGHT_TRANSFORMS[transform](conv)
    bn = nn.BatchNorm2d(4).double()
    randomize_bn_(bn, torch.Generator().manual_seed(seed))
    return ConvBN.from_modules(conv, bn)


def _run(block, x):
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = block(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), x.grad, {name: p.grad for name, p in block.named_parameters()}


def _assert_same(a, b, tol=1e-10):
    assert rel_err(a[0], b[0]) < tol and rel_err(a[1], b[1]) < tol
    assert set(a[2]) == set(b[2])
    for name, grad in b[2].items():
        assert grad is not None and rel_err(a[2][name], grad) < tol, name


X = torch.randn(2, 3, 6, 5, dtype=torch.float64)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("transform", list(WEIGHT_TRANSFORMS))
def test_tune_recomputes_a_hooked_or_parametrized_weight_as_eval_does(transform, training):
    by_mode = {}
    for mode in ("eval", "tune"):
        block = _block(transform)  # a fresh copy each: spectral norm's power iteration updates state
        block.train(training)
        keys = list(block.state_dict())
        block.mode = mode
        by_mode[mode] = [_run(block, X) for _ in range(2)], block.state_dict()  # twice: no stale weight
        assert list(block.state_dict()) == keys
    (eval_runs, eval_state), (tune_runs, tune_state) = by_mode["eval"], by_mode["tune"]
    for eval_run, tune_run in zip(eval_runs, tune_runs):
        _assert_same(tune_run, eval_run)
    for name, value in eval_state.items():  # the power iteration's vectors too
        assert rel_err(tune_state[name], value) < 1e-12, name


@pytest.mark.parametrize("transform", list(WEIGHT_TRANSFORMS))
def test_deploy_refuses_a_weight_it_cannot_fold_into(transform):
    block = _block(transform)
    block.mode = "eval"
    before = {name: t.clone() for name, t in block.state_dict().items()}
    with pytest.raises(ValueError, match="Conv2d's weight is not a Parameter of its own.*Use mode 'tune'"):
        block.mode = "deploy"
    assert block.mode is Mode.EVAL
    assert "parametriz" in convbn_unsupported_reason(block.conv, block.bn)
    assert convbn_unsupported_reason(block.conv, block.bn, modes=("train", "eval", "tune")) is None
    state = block.state_dict()
    assert list(state) == list(before)
    for name, value in before.items():
        assert torch.equal(state[name], value), name


def test_a_parametrization_added_in_deploy_is_refused_at_the_next_call():
    block = _block()
    block.mode = "deploy"
    parametrize.register_parametrization(block.conv, "weight", _Double())
    with pytest.raises(ValueError, match="not a Parameter of its own"):
        block.mode = "tune"  # leaving deploy checks too: there is no stored weight to restore into


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def _counting_hook(calls, kind):
    def hook(module, *args):
        calls.append(kind)

    return hook


@pytest.mark.parametrize("mode", ["tune", "deploy"])
@pytest.mark.parametrize("register", ["register_forward_hook", "register_full_backward_hook"])
def test_operator_forward_and_backward_hooks_are_refused_where_the_operator_is_not_called(mode, register):
    block = _block()
    calls = []
    getattr(block.conv, register)(_counting_hook(calls, register))
    for ok in ("train", "eval"):  # these call the convolution: the hook runs
        block.mode = ok
        block(X.clone().requires_grad_(True)).sum().backward()
    assert len(calls) == 2
    kind = "forward hook" if register == "register_forward_hook" else "backward hook"
    with pytest.raises(ValueError, match=f"Conv2d has a {kind}.*mode '{mode}' never computes it"):
        block.mode = mode
    assert block.mode is Mode.EVAL


def test_a_hook_registered_after_switching_is_refused_at_the_call():
    block = _block()
    block.mode = "tune"
    handle = block.conv.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="forward hook"):
        block(X)
    handle.remove()
    block(X)


@pytest.mark.parametrize("with_kwargs", [False, True])
def test_operator_pre_hooks_run_in_every_mode(with_kwargs):
    calls = []

    def pre_hook(module, args, *kwargs):  # shifts the input: tune and deploy must see the shifted one
        calls.append(1)
        shifted = (args[0] * 2 + 1,)
        return (shifted, kwargs[0]) if with_kwargs else shifted

    block = _block()
    block.conv.register_forward_pre_hook(pre_hook, with_kwargs=with_kwargs)
    block.mode = "eval"
    expected = _run(block, X)
    block.mode = "tune"
    _assert_same(_run(block, X), expected)
    block.mode = "deploy"
    with torch.no_grad():
        assert rel_err(block(X), expected[0]) < 1e-10
    assert len(calls) == 3


@pytest.mark.parametrize("register", ["register_forward_hook", "register_forward_pre_hook"])
def test_batchnorm_hooks_run_in_train_mode_and_are_refused_where_batchnorm_is_not_called(register):
    block = _block()
    calls = []
    getattr(block.bn, register)(_counting_hook(calls, register))
    block(X)
    assert len(calls) == 1
    for mode in ("eval", "tune", "deploy"):
        with pytest.raises(ValueError, match=f"BatchNorm \\(BatchNorm2d\\) has a forward .*mode '{mode}'"):
            block.mode = mode
    assert block.mode is Mode.TRAIN
