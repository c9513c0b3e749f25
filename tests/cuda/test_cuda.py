"""The GPU paths (marked ``cuda``; scripts/device_check.sh runs them): every mode and tune strategy
against eval, fp16 under GradScaler, bf16, TF32, channels_last, torch.compile, and Tune's memory on the
device.

Float32 comparisons run with TF32 off (cuDNN convolutions use it by default on Ampere and later GPUs, which
rounds their inputs to 10 mantissa bits: Tune and Eval then differ by that rounding, not by 1e-4);
the TF32 test compares both with the exact float32 step instead.

They run on ``cuda`` and skip cleanly without it. With TLLIB_TUNE_TEST_DEVICE=cpu they run the same code
on the CPU (scripts/device_check.sh --device cpu), where the CPU can (fp16 needs CPU autocast support;
compile needs a C++ compiler)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from tests.conftest import randomize_all_bn_, rel_err
from tllib_tune import ConvBN, set_mode
from tllib_tune.benchmark.measure import Net
from tllib_tune.models import get_model
from tllib_tune.utils.memory import SavedTensorMeter

DEVICE = os.environ.get("TLLIB_TUNE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(),
        reason="no CUDA device (set TLLIB_TUNE_TEST_DEVICE=cpu to run these on the CPU)",
    ),
]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off for cuDNN convolutions and matrix products during each test (restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _block(strategy: str = "auto", bias: bool = False) -> ConvBN:
    torch.manual_seed(0)
    block = ConvBN(8, 16, 3, stride=2, bias=bias)
    randomize_all_bn_(block, seed=1)
    block.tune_strategy = strategy
    return block.to(DEVICE)


def _grads(model: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    x = x.detach().requires_grad_(True)
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    return (out, *torch.autograd.grad(out, [x, *params], upstream.to(out.dtype), allow_unused=True))


@pytest.mark.parametrize("strategy", ["auto", "weight", "output"])
@pytest.mark.parametrize("bias", [False, True])
def test_tune_equals_eval_and_deploy_forward_equals_eval(strategy, bias):
    block = _block(strategy, bias)
    x = torch.randn(2, 8, 12, 12, device=DEVICE)
    upstream = torch.randn(2, 16, 6, 6, device=DEVICE)
    block.mode = "eval"
    expected = _grads(block, x, upstream)
    block.mode = "tune"
    for actual, reference in zip(_grads(block, x, upstream), expected):
        assert rel_err(actual, reference) < 1e-4
    block.mode = "deploy"
    assert rel_err(block(x), expected[0]) < 1e-4
    block.mode = "train"
    assert block(x).shape == expected[0].shape


def _net(arch: str = "resnet18") -> Net:
    torch.manual_seed(0)
    net = Net(get_model(arch, pretrained=False), num_classes=10)
    return randomize_all_bn_(net, seed=0).to(DEVICE)


def _amp_step(net: Net, mode: str, dtype, x: torch.Tensor, scaler=None):
    """Loss and gradients of one step in ``mode`` under autocast to ``dtype`` (None: float32)."""
    set_mode(net.backbone, mode)
    net.zero_grad(set_to_none=True)
    y = torch.arange(x.shape[0], device=DEVICE)
    with torch.autocast(torch.device(DEVICE).type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = nn.functional.cross_entropy(net(x).float(), y)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(torch.optim.SGD(net.parameters(), lr=0.0))
    grads = torch.cat([p.grad.float().flatten() for p in net.parameters() if p.grad is not None])
    return loss.detach(), grads


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_tune_under_autocast_is_as_close_to_float32_as_eval(amp):
    """Tune folds in float32 and runs the convolution in the low precision, eval normalises the
    low-precision output: both round differently, so each is compared with the float32 step."""
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    device_type = torch.device(DEVICE).type
    if amp == "fp16" and device_type == "cpu" and not torch.amp.is_autocast_available("cpu"):
        pytest.skip("this torch has no CPU autocast")
    net = _net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    ref_loss, ref_grads = _amp_step(net, "eval", None, x)
    errors = {}
    for mode in ("eval", "tune"):
        scaler = torch.amp.GradScaler(device_type, init_scale=1024.0) if amp == "fp16" else None
        loss, grads = _amp_step(net, mode, dtype, x, scaler)
        assert torch.isfinite(loss) and torch.isfinite(grads).all()
        errors[mode] = (rel_err(loss, ref_loss), rel_err(grads, ref_grads))
    for tune_err, eval_err in zip(errors["tune"], errors["eval"]):
        assert tune_err <= max(2 * eval_err, 2e-3), errors


def test_tune_under_tf32_is_as_close_to_float32_as_eval():
    """With TF32 on (cuDNN's default for float32 convolutions on Ampere and later), Tune convolves with
    W * s and Eval with W before normalising: each rounds its own way, so each is compared with the exact
    float32 step."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("TF32 is a CUDA setting: on the CPU float32 is exact and the tests above cover it")
    net = _net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    ref_loss, ref_grads = _amp_step(net, "eval", None, x)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    errors = {}
    for mode in ("eval", "tune"):
        loss, grads = _amp_step(net, mode, None, x)
        errors[mode] = (rel_err(loss, ref_loss), rel_err(grads, ref_grads))
    for tune_err, eval_err in zip(errors["tune"], errors["eval"]):
        assert tune_err <= max(2 * eval_err, 2e-3), errors


def test_channels_last_tune_equals_eval_and_keeps_deploys_memory():
    net = _net().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 10, device=DEVICE)
    results, memory = {}, {}
    for mode in ("eval", "tune", "deploy"):
        set_mode(net.backbone, mode)
        with SavedTensorMeter(exclude=[net]) as meter:
            out = net(x)
        memory[mode] = meter.bytes
        out.backward(upstream)
        results[mode] = out.detach()
        net.zero_grad(set_to_none=True)
    assert (
        rel_err(results["tune"], results["eval"]) < 1e-4
        and rel_err(results["deploy"], results["eval"]) < 1e-4
    )
    assert memory["tune"] == memory["deploy"] < 0.6 * memory["eval"]


def test_tune_holds_half_of_evals_device_memory_after_forward_and_less_at_the_peak():
    """What the CUDA allocator holds once the forward is done (the activations kept for backward, and
    the output) is about half of Eval's in Tune; the step's peak (which adds the gradients, cuDNN's
    workspaces and backward's temporaries, alike in both modes) is lower too."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("allocated memory is CUDA's; on the CPU the saved bytes above stand for it")
    net = _net("resnet50")
    x = torch.randn(8, 3, 112, 112, device=DEVICE)
    held, peaks = {}, {}
    for mode in ("eval", "tune"):
        set_mode(net.backbone, mode)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = net(x).sum()
        held[mode] = torch.cuda.memory_allocated() - base
        loss.backward()
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - base
        del loss
        net.zero_grad(set_to_none=True)
    assert held["tune"] < 0.6 * held["eval"], held
    assert peaks["tune"] < peaks["eval"], peaks


def test_compiled_tune_equals_eager_tune_on_the_device():
    if torch.device(DEVICE).type == "cpu" and shutil.which("g++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    block = _block("weight", bias=True)
    block.mode = "tune"
    x = torch.randn(2, 8, 12, 12, device=DEVICE)
    upstream = torch.randn(2, 16, 6, 6, device=DEVICE)
    expected = _grads(block, x, upstream)
    torch._dynamo.reset()
    actual = _grads(torch.compile(block, dynamic=False), x, upstream)
    for a, e in zip(actual, expected):
        assert rel_err(a, e) < 1e-4
