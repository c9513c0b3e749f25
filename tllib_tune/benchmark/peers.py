"""What users would pick instead of Tune, as benchmark modes: torch.compile (with PyTorch's own Conv-BN
fold, the ``efficient_conv_bn_eval`` pass, on torchvision's model; or on ours in eval, tune, deploy) and
activation checkpointing per stage (:mod:`tllib_tune.utils.checkpointing`).

Every compiled variant is compiled in a clean state for each (batch size, input size): dynamo's caches
are reset, inductor's FX graph cache and AOTAutograd's cache are off and the cache directory is a fresh
temporary one, so no variant can reuse a graph compiled under the other value of the pass flag. A
variant's first iteration (which compiles forward and backward) is timed apart as its compile time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional

import torch
from torch import nn

__all__ = [
    "COMPILED_MODES",
    "CHECKPOINT_MODES",
    "PEER_MODES",
    "base_mode",
    "pass_available",
    "compile_problem",
    "torchvision_peer",
    "fresh_compile_state",
    "compile_settings",
    "PASS_FLAG",
]

#: torch.compile variants: torchvision's model with PyTorch's pass, ours in three modes.
COMPILED_MODES = ("compiled-pass", "compiled-eval", "compiled-tune", "compiled-deploy")
#: Ours with torch.utils.checkpoint per backbone stage.
CHECKPOINT_MODES = ("eval+ckpt", "tune+ckpt")
PEER_MODES = COMPILED_MODES + CHECKPOINT_MODES
#: The inductor setting behind ``compiled-pass``.
PASS_FLAG = "efficient_conv_bn_eval_fx_passes"


def base_mode(mode: str) -> Optional[str]:
    """The ConvBN mode a peer mode runs our blocks in (None for compiled-pass, torchvision's model)."""
    if mode == "compiled-pass":
        return None
    if mode.startswith("compiled-"):
        return mode[len("compiled-") :]
    return mode.split("+", 1)[0]


def pass_available() -> bool:
    """Whether this torch has PyTorch's Conv-BN fold pass for compiled training graphs."""
    import torch._inductor.config as inductor_config

    return hasattr(inductor_config, PASS_FLAG)


def compile_problem(device: str) -> Optional[str]:
    """Why torch.compile cannot run here, or None: inductor on the CPU needs a C++ compiler."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++, c++ or clang++ on PATH)"
    return None


def torchvision_peer(arch: str, ours: nn.Module, num_classes: int) -> nn.Module:
    """torchvision's model of ``arch`` with the weights and BatchNorm statistics of ``ours`` (a
    :class:`.measure.Net`), in eval mode (BatchNorm with running statistics: what the pass folds)."""
    import torchvision

    from ..models.weights import WeightsError, to_torchvision_state_dict

    name = arch.split("/", 1)[1] if arch.startswith("torchvision/") else arch
    builder = getattr(torchvision.models, name, None)
    try:
        state = to_torchvision_state_dict(ours.backbone)
    except WeightsError as exc:
        builder, reason = None, str(exc)
    else:
        reason = f"torchvision has no model {name!r}"
    if builder is None:
        raise ValueError(
            f"compiled-pass compares with torchvision's own {arch!r} model: {reason}; use a ResNet or RegNet "
            "arch, or leave compiled-pass out of `modes`"
        )
    peer = builder(num_classes=num_classes)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the head comes from ours
    missing, unexpected = peer.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        raise ValueError(
            f"torchvision's {name} does not take our weights: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        peer.fc.weight.copy_(ours.head.weight)
        peer.fc.bias.copy_(ours.head.bias)
    return peer.eval()


@contextlib.contextmanager
def fresh_compile_state() -> Iterator[str]:
    """For a whole run: inductor's and AOTAutograd's persistent caches off, a fresh cache directory
    (removed afterwards), dynamo reset before and after. Yields the directory."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    directory = tempfile.mkdtemp(prefix="tllib-tune-inductor-")
    old_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    patches = [(inductor_config, "fx_graph_cache", False), (inductor_config, "fx_graph_remote_cache", False),
               (functorch_config, "enable_autograd_cache", False)]  # fmt: skip
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches if hasattr(obj, name)]
    for obj, name, value in patches:
        if hasattr(obj, name):
            setattr(obj, name, value)
    torch._dynamo.reset()
    try:
        yield directory
    finally:
        torch._dynamo.reset()
        for obj, name, value in saved:
            setattr(obj, name, value)
        if old_dir is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_dir
        shutil.rmtree(directory, ignore_errors=True)


def compile_settings(mode: str) -> Any:
    """The inductor configuration a compiled mode compiles under: the pass on for compiled-pass (where
    this torch has it), off for ours (else inductor would fold our eval blocks itself)."""
    import torch._inductor.config as inductor_config

    if not pass_available():
        return contextlib.nullcontext()
    return inductor_config.patch({PASS_FLAG: mode == "compiled-pass"})
