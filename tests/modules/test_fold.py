"""The fold math (tllib_tune.modules.fold) against PyTorch's own fusion and BatchNorm, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from tests.conftest import rel_err
from tllib_tune.modules.fold import (
    bn_scale,
    channel_dot,
    fold_bias_backward,
    fold_bn,
    fold_dtype,
    fold_weight_backward,
    unfold_bn,
    unfold_bn_beta,
)
from tllib_tune.modules.ops import LINEAR, OpSpec, op_forward


def _tensors(bias: bool, affine: bool, shape=(6, 3, 3, 3), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)

    c = shape[0]
    weight = randn(*shape)
    b = randn(c) if bias else None
    gamma = randn(c) * 3 if affine else None
    beta = randn(c) if affine else None
    mean = randn(c)
    var = (torch.rand(c, generator=gen, dtype=torch.float64) * 5 + 0.01).to(dtype)
    return weight, b, gamma, beta, mean, var


@pytest.mark.parametrize("bias,affine", list(itertools.product((True, False), (True, False))))
def test_fold_matches_torch_fusion_and_the_formula(bias, affine):
    weight, b, gamma, beta, mean, var = _tensors(bias, affine)
    eps = 1e-3
    folded_w, folded_b = fold_bn(weight, b, gamma, beta, mean, var, eps)
    ref_w, ref_b = fuse_conv_bn_weights(weight, b, mean, var, eps, gamma, beta)
    assert rel_err(folded_w, ref_w) < 1e-14
    assert rel_err(folded_b, ref_b) < 1e-14
    s = bn_scale(gamma, var, eps, torch.float64)
    expected_s = (1.0 if gamma is None else gamma) / torch.sqrt(var + eps)
    assert rel_err(s, expected_s) < 1e-15


@pytest.mark.parametrize("bias,affine", [(True, True), (False, True), (False, False)])
def test_the_folded_operator_computes_conv_then_batchnorm(bias, affine):
    weight, b, gamma, beta, mean, var = _tensors(bias, affine)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    spec = OpSpec("conv", stride=(2, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    expected = F.batch_norm(op_forward(spec, x, weight, b), mean, var, gamma, beta, False, 0.0, 1e-5)
    folded = op_forward(spec, x, *fold_bn(weight, b, gamma, beta, mean, var, 1e-5))
    assert rel_err(folded, expected) < 1e-13


def test_linear_spec_and_fold():
    weight, b, gamma, beta, mean, var = _tensors(True, True, shape=(4, 5))
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = F.batch_norm(F.linear(x, weight, b), mean, var, gamma, beta, False, 0.0, 1e-5)
    assert LINEAR.is_linear and not OpSpec("conv", (1,), (0,), (1,), 1).is_linear
    assert rel_err(op_forward(LINEAR, x, *fold_bn(weight, b, gamma, beta, mean, var, 1e-5)), expected) < 1e-13


@pytest.mark.parametrize("affine", [True, False])
def test_unfold_inverts_fold(affine):
    weight, b, gamma, beta, mean, var = _tensors(True, affine)
    folded_w, folded_b = fold_bn(weight, b, gamma, beta, mean, var, 1e-5)
    w, b_back = unfold_bn(folded_w, folded_b, gamma, beta, mean, var, 1e-5)
    assert rel_err(w, weight) < 1e-14 and rel_err(b_back, b) < 1e-13
    assert unfold_bn(folded_w, None, gamma, beta, mean, var, 1e-5)[1] is None
    if affine:  # the fold's bias stored in beta's place: beta comes back from b' and b
        assert rel_err(unfold_bn_beta(folded_b, b, gamma, mean, var, 1e-5), beta) < 1e-13
        assert (
            rel_err(
                unfold_bn_beta(
                    fold_bn(weight, None, gamma, beta, mean, var, 1e-5)[1], None, gamma, mean, var, 1e-5
                ),
                beta,
            )
            < 1e-13
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fold_runs_in_at_least_float32(dtype):
    weight, b, gamma, beta, mean, var = _tensors(True, True, dtype=dtype)
    folded_w, folded_b = fold_bn(weight, b, gamma, beta, mean, var, 1e-5)
    assert folded_w.dtype == folded_b.dtype == fold_dtype(dtype)
    assert fold_dtype(dtype) == (torch.float64 if dtype == torch.float64 else torch.float32)
    # the same values as the fold of the parameters converted to float32 first
    ref_w, _ = fold_bn(*(t.to(fold_dtype(dtype)) for t in (weight, b, gamma, beta, mean, var)), 1e-5)
    assert torch.equal(folded_w, ref_w)


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (4, 5)])
@pytest.mark.parametrize("bias,affine", list(itertools.product((True, False), (True, False))))
def test_fold_backward_is_autograd_through_the_fold(shape, bias, affine):
    weight, b, gamma, beta, mean, var = _tensors(bias, affine, shape=shape)
    leaves = [t.requires_grad_() for t in (weight, b, gamma, beta) if t is not None]
    folded_w, folded_b = fold_bn(weight, b, gamma, beta, mean, var, 1e-3)
    gen = torch.Generator().manual_seed(5)
    grad_w = torch.randn(folded_w.shape, generator=gen, dtype=torch.float64)
    grad_b = torch.randn(folded_b.shape, generator=gen, dtype=torch.float64)
    pairs = [(out, g) for out, g in ((folded_w, grad_w), (folded_b, grad_b)) if out.requires_grad]
    outputs, upstream = zip(*pairs)
    expected = dict(zip(map(id, leaves), torch.autograd.grad(outputs, leaves, upstream)))

    inv_std = torch.rsqrt(var + 1e-3)
    scale = bn_scale(gamma, var, 1e-3, torch.float64)
    with torch.no_grad():
        dw, share = fold_weight_backward(grad_w.clone(), weight, scale, (True, affine))
        db, dgamma, dbeta = fold_bias_backward(grad_b, b, mean, share, inv_std, scale, (bias, affine, affine))
    assert rel_err(dw, expected[id(weight)]) < 1e-14
    assert (db is None) == (b is None) and (b is None or rel_err(db, expected[id(b)]) < 1e-14)
    if affine:
        assert rel_err(dgamma, expected[id(gamma)]) < 1e-13 and rel_err(dbeta, expected[id(beta)]) < 1e-15
    else:
        assert share is None and dgamma is None and dbeta is None


def test_fold_weight_backward_scales_in_place_and_computes_only_what_is_asked():
    weight, _, gamma, _, _, var = _tensors(False, True)
    scale = bn_scale(gamma, var, 1e-5, torch.float64)
    grad = torch.randn_like(weight)
    expected = grad * scale.view(-1, 1, 1, 1)
    dw, share = fold_weight_backward(grad, weight, scale, (True, False))
    assert dw is grad and share is None and rel_err(dw, expected) < 1e-15
    dw, share = fold_weight_backward(expected.clone(), weight, scale, (False, True))
    assert dw is None and rel_err(share, channel_dot(expected, weight)) < 1e-15
    assert rel_err(channel_dot(expected, weight), (expected * weight).sum((1, 2, 3))) < 1e-14
