"""Gradient checkpointing per backbone stage: keep only each stage's input for backward and recompute the
stage's activations there (``torch.utils.checkpoint``). The fine-tuning application's
``--grad-checkpointing`` and the benchmark's ``eval+ckpt`` / ``tune+ckpt`` modes both use it.

    n = enable_grad_checkpointing(model.backbone)     # 4 for a ResNet: layer1 ... layer4
    disable_grad_checkpointing(model.backbone)

The non-reentrant form is the default (what torch recommends). The reentrant form
(``use_reentrant=True``) saves the stage input through autograd's saved-tensor hooks and recomputes with
the hooks of the step in force, so that a meter of saved tensors over the whole step
(:class:`tllib_tune.utils.memory.PeakSavedMeter`) sees the recomputation too: the benchmark uses it.

In Tune mode the savings add up: Tune keeps only each ConvBN's input, checkpointing keeps only each
stage's input. The results are those of the plain forward (the recomputation runs the same operations on
the same values), so training curves do not change; a BatchNorm that trains on batch statistics (train
mode, In-Place ABN) updates its running statistics in the forward only, not again while the stage is
recomputed. Only used while autograd records (training); an evaluation under ``torch.no_grad()`` runs the
stages directly.

:func:`backbone_stages` finds the stages: ``stages`` (tllib_tune's RegNet, timm's ConvNeXt-style models),
else ``layer1`` ... ``layerN`` (ResNets, torchvision and ours), else the children of a ``features``
Sequential (torchvision's MobileNet / EfficientNet / VGG style).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint

__all__ = ["backbone_stages", "enable_grad_checkpointing", "disable_grad_checkpointing", "CheckpointedStage"]


def backbone_stages(backbone: nn.Module) -> List[nn.Module]:
    """The stages of ``backbone`` in forward order; ValueError naming the model when none is found."""
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, (list, tuple, nn.ModuleList, nn.Sequential)) and len(stages):
        return list(stages)
    layers = []
    while isinstance(getattr(backbone, f"layer{len(layers) + 1}", None), nn.Module):
        layers.append(getattr(backbone, f"layer{len(layers) + 1}"))
    if layers:
        return layers
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return list(features.children())
    raise ValueError(
        f"cannot find the stages of {type(backbone).__name__} for gradient checkpointing: it has no "
        "`stages`, `layer1` ... or `features` Sequential"
    )


class CheckpointedStage:
    """A stage's forward that, while autograd records, runs under ``torch.utils.checkpoint``.

    Not a module inserted into the model: :func:`enable_grad_checkpointing` points the stage's ``forward``
    at :meth:`run`, so module names and state_dict keys stay as they were."""

    def __init__(self, stage: nn.Module, use_reentrant: bool = False) -> None:
        self.plain_forward = stage.forward
        self.use_reentrant = use_reentrant
        self.norms = [m for m in stage.modules() if isinstance(m, _NormBase)]
        self.contexts = lambda: (contextlib.nullcontext(), self.statistics_kept())

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.plain_forward(*args, **kwargs)
        if self.use_reentrant:
            if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                return self.plain_forward(*args, **kwargs)  # the reentrant form would drop the gradients
            return checkpoint(functools.partial(self._reentrant_forward, **kwargs), *args, use_reentrant=True)
        if torch.compiler.is_compiling():  # compiled graphs apply buffer updates once, functionally
            return checkpoint(self.plain_forward, *args, use_reentrant=False, **kwargs)
        return checkpoint(self.plain_forward, *args, use_reentrant=False, context_fn=self.contexts, **kwargs)

    def _reentrant_forward(self, *args: Any, **kwargs: Any) -> Any:
        """The reentrant form runs the forward without grad and the recomputation with it: the latter
        keeps the running statistics as the forward left them."""
        recomputing = torch.is_grad_enabled()
        with self.statistics_kept() if recomputing else contextlib.nullcontext():
            return self.plain_forward(*args, **kwargs)

    @contextlib.contextmanager
    def statistics_kept(self) -> Iterator[None]:
        """The recomputation's context: normalisation layers that train on batch statistics normalise as
        in the forward (the same operations save the same tensors) but with momentum 0, which leaves
        their running statistics exactly as the forward left them; their batch count is put back."""
        updating = [m for m in self.norms if m.training and m.track_running_stats]
        saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                 for m in updating]  # fmt: skip
        for module in updating:
            module.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged, bit for bit
        try:
            yield
        finally:
            for module, (momentum, count) in zip(updating, saved):
                module.momentum = momentum
                if count is not None:
                    module.num_batches_tracked.copy_(count)


def enable_grad_checkpointing(backbone: nn.Module, *, use_reentrant: bool = False) -> int:
    """Checkpoint every stage of ``backbone`` (see :func:`backbone_stages`); returns how many. Calling it
    again changes nothing (call :func:`disable_grad_checkpointing` first to change ``use_reentrant``)."""
    stages = backbone_stages(backbone)
    for stage in stages:
        if "_grad_checkpointing" not in stage.__dict__:
            wrapper = CheckpointedStage(stage, use_reentrant=use_reentrant)
            stage.__dict__["_grad_checkpointing"] = wrapper
            stage.forward = wrapper.run  # an instance attribute: nn.Module.__call__ finds it first
    return len(stages)


def disable_grad_checkpointing(backbone: nn.Module) -> int:
    """Undo :func:`enable_grad_checkpointing`; returns how many stages were checkpointed."""
    count = 0
    for stage in backbone_stages(backbone):
        wrapper = stage.__dict__.pop("_grad_checkpointing", None)
        if wrapper is not None:
            del stage.forward
            count += 1
    return count
