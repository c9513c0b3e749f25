"""One fine-tuning run of the reproduction: a pretrained backbone, a new head, TLlib's recipe, one mode.

:func:`build_classifier` makes the network every run starts from: the backbone with the given weights
(or random ones), then a head initialised from the run's seed, so that all modes of one seed start from
the same numbers; :func:`apply_mode` puts the backbone in a ConvBN mode or converts it to In-Place ABN.
:func:`finetune` trains it with :func:`tllib_tune.engine.train_one_epoch` (SGD Nesterov, backbone at 0.1x
the learning rate, MultiStepLR per epoch) and returns top-1 on the test split, the saved-for-backward
MiB of one iteration, the median seconds per iteration and the per-step training losses.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..engine import NonFiniteLossError, build_optimizer, train_one_epoch, validate
from ..models import get_model
from ..modules.classifier import Classifier
from ..modules.inplace_abn import convert_to_inplace_abn
from ..modules.modes import set_mode
from .data import eval_loader, train_loader
from .settings import Settings

__all__ = [
    "RunResult",
    "build_classifier",
    "apply_mode",
    "fit",
    "test_accuracy",
    "finetune",
    "trainable_state",
    "max_abs_difference",
]


@dataclass
class RunResult:
    """What one (mode, seed) fine-tuning run measured; ``state`` (final trainable weights) is kept only
    when asked for and never written out."""

    mode: str
    seed: int
    pretrained: bool
    acc1: float
    train_loss: float
    activation_mib: float
    s_per_it: float
    seconds: float
    losses: List[float] = field(default_factory=list)
    diverged: Optional[str] = None
    state: Optional[Dict[str, Tensor]] = field(default=None, repr=False)

    def row(self) -> Dict[str, Any]:
        """The CSV/JSON view (no tensors, no loss curve)."""
        keys = ("mode", "seed", "pretrained", "acc1", "train_loss", "activation_mib", "s_per_it", "seconds")
        return {**{k: getattr(self, k) for k in keys}, "diverged": self.diverged or ""}


def apply_mode(backbone: nn.Module, mode: str) -> None:
    """ConvBN mode ``mode`` for every block, or "inplace-abn": conv + In-Place ABN (leaky ReLU 0.01)."""
    if mode == "inplace-abn":
        convert_to_inplace_abn(backbone)
    else:
        set_mode(backbone, mode)


def build_classifier(
    arch: str,
    num_classes: int,
    *,
    backbone_state: Optional[Dict[str, Tensor]],
    seed: int,
    mode: str = "train",
) -> Classifier:
    """Backbone (pretrained from ``backbone_state``, or random from ``seed``) + a head drawn from ``seed``.

    With weights the backbone learns at 0.1x the rate (TLlib's ``--finetune``); from scratch at 1x."""
    torch.manual_seed(seed)
    backbone = get_model(arch)
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    model = Classifier(backbone, num_classes, finetune=backbone_state is not None)
    apply_mode(model.backbone, mode)
    return model


def trainable_state(model: nn.Module) -> Dict[str, Tensor]:
    """Copies of the trainable parameters by name, as eval mode sees them (deploy unfolded)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def max_abs_difference(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> float:
    """Largest absolute elementwise difference over the tensors two states share."""
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not common:
        raise ValueError("the two states share no tensors to compare")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in common)


def _median_interval(stamps: List[List[float]]) -> float:
    gaps = [b - a for epoch in stamps for a, b in zip(epoch, epoch[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def fit(
    model: nn.Module,
    dataset: Any,
    settings: Settings,
    seed: int,
    *,
    step: Optional[Callable[..., None]] = None,
    label: str = "",
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` with the recipe in ``settings`` (lr, epochs, iters_per_epoch,
    lr_milestones, batch_size, momentum, weight_decay); data order and augmentation from ``seed``.

    Returns ``losses`` (per step), ``train_loss``/``train_acc1`` (last epoch), ``activation_mib`` (first
    step), ``s_per_it`` (median step time) and ``diverged`` (None, or where the loss became inf/NaN)."""
    optimizer, scheduler = build_optimizer(
        model.get_parameters(settings.lr),  # type: ignore[operator]
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        milestones=settings.lr_milestones,
    )
    loader, sampler = train_loader(dataset, settings.batch_size, settings.iters_per_epoch, seed)
    losses: List[float] = []
    stamps: List[List[float]] = []

    def on_step(iteration: int, values: Dict[str, float]) -> None:
        stamps[-1].append(time.perf_counter())
        losses.append(values["loss"])
        if step is not None:
            step(note=f"{label} loss {values['loss']:.3f}".strip())

    nan = float("nan")
    result: Dict[str, Any] = {"activation_mib": nan, "diverged": None, "train_loss": nan, "train_acc1": nan}
    try:
        for epoch in range(settings.epochs):
            sampler.set_epoch(epoch)
            stamps.append([])
            stats = train_one_epoch(
                model, loader, optimizer, epoch=epoch, iters_per_epoch=settings.iters_per_epoch,
                on_step=on_step, progress=False, measure_activations=epoch == 0,
            )  # fmt: skip
            if epoch == 0:
                result["activation_mib"] = stats["activations_mb"]
            result.update(train_loss=stats["loss"], train_acc1=stats["acc1"])
            scheduler.step()
    except NonFiniteLossError as exc:
        result.update(diverged=str(exc), train_loss=nan, train_acc1=nan)
    return {**result, "losses": losses, "s_per_it": _median_interval(stamps)}


def test_accuracy(model: nn.Module, dataset: Any, batch_size: int) -> float:
    """Top-1 (percent) on ``dataset`` in ``model.eval()``."""
    return validate(model, eval_loader(dataset, batch_size), progress=False)["acc1"]


def finetune(
    settings: Settings,
    sets: Dict[str, Any],
    backbone_state: Optional[Dict[str, Tensor]],
    mode: str,
    seed: int,
    *,
    step: Optional[Callable[..., None]] = None,
    keep_state: bool = False,
) -> RunResult:
    """Fine-tune on ``sets["train"]`` and test on ``sets["test"]`` (see the module docstring).

    A loss that becomes inf/NaN ends the run early: ``diverged`` says where, ``acc1`` is NaN."""
    start = time.perf_counter()
    model = build_classifier(
        settings.arch, sets["num_classes"], backbone_state=backbone_state, seed=seed, mode=mode
    )
    fitted = fit(model, sets["train"], settings, seed, step=step, label=f"{mode} seed {seed}")
    diverged = fitted["diverged"]
    return RunResult(
        mode=mode,
        seed=seed,
        pretrained=backbone_state is not None,
        acc1=float("nan") if diverged else test_accuracy(model, sets["test"], 4 * settings.batch_size),
        train_loss=fitted["train_loss"],
        activation_mib=fitted["activation_mib"],
        s_per_it=fitted["s_per_it"],
        seconds=time.perf_counter() - start,
        losses=fitted["losses"],
        diverged=diverged,
        state=trainable_state(model) if keep_state else None,
    )
