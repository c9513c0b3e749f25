"""The float64 check: eval and tune follow one trajectory to round-off; deploy drifts from it.

From the pretrained backbone and one seeded head, a few SGD steps (TLlib's optimiser and learning rates)
on the same fixed batches in eval, tune and deploy mode, all in float64. Tune computes eval's function
of the same parameters, so their parameters after the steps differ only by round-off (the paper: to
1e-14 in float64). Deploy trains the folded weights W * s instead: the same first gradient step, seen
in the unfolded parameters, is rescaled per channel by 1 / s^2, so its trajectory leaves eval's. Its
drift is reported relative to the parameters' norm and to the size of eval's own update.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import build_optimizer
from .settings import Settings
from .transfer import apply_mode, build_classifier, max_abs_difference, trainable_state

__all__ = ["fixed_batches", "float64_check"]


def fixed_batches(dataset: Any, batch_size: int, steps: int, seed: int) -> List[Tuple[Tensor, Tensor]]:
    """``steps`` batches of distinct images (no augmentation: ``dataset`` should be un-augmented)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    if len(order) < batch_size * steps:
        order = (order * (batch_size * steps // len(order) + 1))[: batch_size * steps]
    batches = []
    for s in range(steps):
        items = [dataset[i] for i in order[s * batch_size : (s + 1) * batch_size]]
        images = torch.stack([x for x, _ in items]).double()
        batches.append((images, torch.tensor([y for _, y in items])))
    return batches


def _steps(
    settings: Settings,
    num_classes: int,
    backbone_state: Dict[str, Tensor],
    mode: str,
    batches: Sequence,
    seed: int,
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], List[float]]:
    """(start, end trainable state, losses) of the SGD steps in ``mode``, in float64."""
    model = build_classifier(settings.arch, num_classes, backbone_state=backbone_state, seed=seed).double()
    start = trainable_state(model)
    apply_mode(model.backbone, mode)  # deploy folds here, in float64
    optimizer, _ = build_optimizer(
        model.get_parameters(settings.lr),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    model.train()
    losses = []
    for images, target in batches:
        loss = F.cross_entropy(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return start, trainable_state(model), losses


def _norm(state: Dict[str, Tensor], keys: Sequence[str]) -> float:
    return torch.sqrt(sum((state[k].double() ** 2).sum() for k in keys)).item()


def _difference_norm(a: Dict[str, Tensor], b: Dict[str, Tensor], keys: Sequence[str]) -> float:
    return _norm({k: a[k] - b[k] for k in keys}, keys)


def float64_check(
    settings: Settings, sets: Dict[str, Any], backbone_state: Dict[str, Tensor], seed: int = 0
) -> Dict[str, Any]:
    """Run the check (see the module docstring) and return its figures, JSON-able."""
    batches = fixed_batches(sets["train_plain"], settings.float64_batch, settings.float64_steps, seed)
    runs = {
        mode: _steps(settings, sets["num_classes"], backbone_state, mode, batches, seed)
        for mode in ("eval", "tune", "deploy")
    }
    start, _, _ = runs["eval"]
    ends = {m: end for m, (_, end, _) in runs.items()}
    backbone = [k for k in start if k.startswith("backbone.")]
    displacement = _difference_norm(ends["eval"], start, backbone)
    deploy_gap = _difference_norm(ends["deploy"], ends["eval"], backbone)
    losses = {m: run[2] for m, run in runs.items()}
    return {
        "steps": settings.float64_steps,
        "batch_size": settings.float64_batch,
        "tune_vs_eval_max_abs_param_diff": max_abs_difference(ends["tune"], ends["eval"]),
        "tune_vs_eval_max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses["tune"], losses["eval"])),
        "eval_backbone_update_norm": displacement,
        "deploy_vs_eval_backbone_diff_norm": deploy_gap,
        "deploy_drift_rel_params": deploy_gap / _norm(ends["eval"], backbone),
        "deploy_drift_rel_update": deploy_gap / displacement if displacement > 0 else float("nan"),
        "deploy_vs_eval_max_abs_param_diff": max_abs_difference(ends["deploy"], ends["eval"]),
        "losses": losses,
    }
