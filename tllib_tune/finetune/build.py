"""The build phase of a fine-tuning run: device, data sets, the classifier and its weights, the loaders.

Each function takes the run's :class:`~tllib_tune.finetune.config.FinetuneConfig` and raises
:class:`~tllib_tune.finetune.errors.FinetuneError` with the fix for what the user can change. Under
torchrun the main process downloads or generates first
(:func:`~tllib_tune.utils.distributed.main_process_first`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..modules.inplace_abn import convert_to_inplace_abn
from ..utils.checkpoint import unwrap_model
from ..utils.data import ShardSampler
from ..utils.distributed import ProcessEnv, main_process_first
from ..utils.signals import leave_stop_signals_to_main
from .config import FinetuneConfig
from .errors import FinetuneError, one_line

__all__ = [
    "DataSplits",
    "seed_everything",
    "setup_device",
    "build_datasets",
    "build_test_split",
    "dataset_classes",
    "build_model",
    "apply_mode",
    "eval_loader",
]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(config: FinetuneConfig) -> torch.device:
    name = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    name = "cpu" if name == "auto" else name
    try:
        return torch.device(name)
    except RuntimeError:
        raise FinetuneError(
            f"`device` {config.device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None


def setup_device(config: FinetuneConfig, env: ProcessEnv) -> torch.device:
    """The run's device (this process's GPU under torchrun), checked against `amp` and `sync_bn`; starts
    the process group (nccl on CUDA, gloo on the CPU) when there are several processes."""
    device = _device(config)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FinetuneError(
                f"`device` {config.device} asks for CUDA, but no CUDA device is available; use `device` cpu"
            )
        if env.distributed:
            device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    elif device.type != "cpu":
        raise FinetuneError(f"`device` {config.device!r} is not supported; use auto, cpu or cuda[:N]")
    if config.amp == "fp16" and device.type != "cuda":
        raise FinetuneError(
            "`amp` fp16 needs a CUDA device (it uses a gradient scaler); use `amp` bf16 on the CPU"
        )
    if config.sync_bn and device.type != "cuda" and env.distributed:
        raise FinetuneError(
            "`sync_bn` needs CUDA devices (SyncBatchNorm does not run on the CPU); drop `sync_bn`"
        )
    if env.distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


@dataclass
class DataSplits:
    """The run's data: train, the held-out val split (None without `val_ratio`) and test."""

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    num_classes: int

    @property
    def val_name(self) -> str:
        """What the per-epoch evaluation runs on: "val", or "test" when nothing is held out."""
        return "val" if self.val is not None else "test"


def crop_scale(dataset: str) -> Tuple[float, float]:
    """RandomResizedCrop's area range: TLlib's 0.2-1, or 0.5-1 on the synthetic set, whose classes differ
    only in a small mark that a 20 % crop often cuts off."""
    return (0.5, 1.0) if dataset == "synthetic" else (0.2, 1.0)


def _load_split(config: FinetuneConfig, split: str, transform: Any) -> Dataset:
    from ..datasets import DatasetError, MissingSplitError, get_dataset

    try:
        return get_dataset(
            config.dataset,
            config.root,
            split=split,
            sample_rate=config.sample_rate if split == "train" else 100,
            transform=transform,
            download=config.dataset != "synthetic",
            **config.reader_options,
        )
    except MissingSplitError:
        raise
    except (DatasetError, FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        other = getattr(exc, "suggested_dataset", None)
        hint = f"; use `dataset` {other}" if other else ""
        raise FinetuneError(
            f"data set {config.dataset!r} at {config.root!r}: {one_line(exc)}{hint}"
        ) from None


def _hold_out(config: FinetuneConfig, full: Dataset, full_eval: Dataset) -> Tuple[Dataset, Dataset]:
    """Train and val subsets: a seeded `val_ratio` of the training images, seen with test transforms."""
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = max(1, round(len(full) * config.val_ratio))
    if n_val >= len(full):
        raise FinetuneError(
            f"`val_ratio` {config.val_ratio} leaves no training images out of {len(full)}; lower it"
        )
    return Subset(full, order[n_val:]), Subset(full_eval, order[:n_val])


def _test_or_held_out(config: FinetuneConfig, test_tf: Any) -> Optional[Dataset]:
    """The test split, or None for a data set without one (a single class-folder tree) when `val_ratio`
    holds out its evaluation images instead; without `val_ratio` that is an error naming both fixes."""
    from ..datasets import MissingSplitError

    try:
        return _load_split(config, "test", test_tf)
    except MissingSplitError as exc:
        if config.val_ratio > 0:
            return None
        raise FinetuneError(
            f"data set {config.dataset!r} at {config.root!r}: {one_line(exc)}; or hold out part of the "
            "training images with `val_ratio`, e.g. 0.2"
        ) from None


def build_datasets(config: FinetuneConfig, env: ProcessEnv) -> DataSplits:
    """The train / val / test splits with TLlib's transforms at `input_size`; checks that one step's batch
    of every process fits in the training set. A data set without a test split (a single class-folder
    tree) evaluates on the `val_ratio` part it holds out: that part is then the test split, and nothing
    is selected on it."""
    from ..datasets import get_test_transform, get_train_transform

    train_tf = get_train_transform(config.input_size, scale=crop_scale(config.dataset))
    test_tf = get_test_transform(config.input_size)
    with main_process_first(env):
        full = _load_split(config, "train", train_tf)
        test = _test_or_held_out(config, test_tf)
        full_eval = _load_split(config, "train", test_tf) if config.val_ratio > 0 else None
    train, val = _hold_out(config, full, full_eval) if full_eval is not None else (full, None)
    if test is None:
        test, val = val, None
    step_batch = config.batch_size * config.grad_accum_steps
    global_batch = step_batch * env.world_size
    if len(train) < global_batch:
        held_out = f", `val_ratio` {config.val_ratio}" if config.val_ratio else ""
        accum = f" x `grad_accum_steps` {config.grad_accum_steps}" if config.grad_accum_steps > 1 else ""
        raise FinetuneError(
            f"`batch_size` {config.batch_size}{accum} x {env.world_size} process(es) = {global_batch} is "
            f"larger than the training set ({len(train)} images of {config.dataset} at `sample_rate` "
            f"{config.sample_rate}{held_out}); use `batch_size` "
            f"{max(1, len(train) // (env.world_size * config.grad_accum_steps))} or less"
        )
    return DataSplits(train=train, val=val, test=test, num_classes=full.num_classes)


def build_test_split(config: FinetuneConfig, env: ProcessEnv) -> Dataset:
    """The test split alone, for evaluating a checkpoint: no training-set checks (a data set without a
    test split gives the `val_ratio` part that its training run held out, as :func:`build_datasets`)."""
    from ..datasets import get_test_transform

    test_tf = get_test_transform(config.input_size)
    with main_process_first(env):
        test = _test_or_held_out(config, test_tf)
        if test is None:
            full_eval = _load_split(config, "train", test_tf)
            test = _hold_out(config, full_eval, full_eval)[1]
    return test


def dataset_classes(dataset: Dataset) -> Optional[List[str]]:
    """The class names of a data set (through Subset wrappers), or None when it has none."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None


def _pretrained(config: FinetuneConfig) -> Tuple[Any, str]:
    """What get_model's ``pretrained`` gets for `pretrained`, and how the run describes it."""
    choice = config.pretrained
    if choice.lower() == "none":
        return False, "random initialisation (`pretrained` none, no download)"
    if choice.lower() == "imagenet":
        return True, "torchvision ImageNet weights"
    if not os.path.isfile(choice):
        raise FinetuneError(
            f"`pretrained` {choice!r}: no such file; give a checkpoint file, 'imagenet' or 'none'"
        )
    return choice, f"weights from {choice}"


def _backbone(config: FinetuneConfig, pretrained: Any) -> nn.Module:
    from ..models import get_model

    try:
        return get_model(config.arch, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        detail = one_line(exc).rstrip(".")
        if pretrained is True:
            raise FinetuneError(
                f"could not load ImageNet weights for {config.arch}: {detail}. Or pass the weights file as "
                "`pretrained` FILE, or train from random weights with `pretrained` none (or run the offline "
                "`quick_start`)"
            ) from None
        raise FinetuneError(
            f"`pretrained` {config.pretrained!r} does not fit `arch` {config.arch}: {detail}"
        ) from None


def build_model(
    config: FinetuneConfig, num_classes: int, env: ProcessEnv, *, load_weights: bool = True
) -> Tuple[nn.Module, str]:
    """Classifier(backbone) with the weights `pretrained` asks for; returns (model, how the weights are
    described). With ``load_weights=False`` (a checkpoint will replace every weight) the network is built
    as `pretrained` asks, learning rates included, but nothing is downloaded or read."""
    from ..models import get_model
    from ..modules.classifier import Classifier

    if not load_weights:
        backbone = get_model(config.arch, pretrained=False)
        finetune = config.pretrained.lower() != "none"
        return Classifier(backbone, num_classes, finetune=finetune), "no pretrained weights"
    pretrained, what = _pretrained(config)
    with main_process_first(env):  # the main process downloads first
        backbone = _backbone(config, pretrained)
    return Classifier(backbone, num_classes, finetune=pretrained is not False), what


def apply_mode(model: nn.Module, mode: str) -> None:
    """Put the backbone in ``mode`` (the head keeps training normally); "inplace-abn" converts it."""
    backbone = unwrap_model(model).backbone
    if mode != "inplace-abn":
        from .. import set_mode

        set_mode(backbone, mode)
        return
    try:
        convert_to_inplace_abn(backbone)
    except (TypeError, ValueError) as exc:
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise FinetuneError(f"`mode` inplace-abn cannot convert {arch}: {one_line(exc)}") from None


def eval_loader(
    dataset: Dataset, config: FinetuneConfig, env: ProcessEnv, device: torch.device
) -> DataLoader:
    """This process's shard of ``dataset`` in order, in batches of `batch_size`."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=ShardSampler(len(dataset), env.rank, env.world_size),
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=leave_stop_signals_to_main,
    )
