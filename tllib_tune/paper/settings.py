"""The reproduction's settings: one frozen record, its two presets (default, fast) and settings checksums.

Every number the experiment uses lives in :class:`Settings`, so that a run is described by it alone: the
synthetic source and target sets, the source pretraining, TLlib's fine-tuning recipe and the float64
check. :func:`settings_checksum` turns any JSON-able description into a short, stable hash; the cached
pretrained backbone and the generated data sets are named by it, so a change of settings regenerates them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

__all__ = ["Settings", "DEFAULT", "FAST", "MODES", "settings_checksum"]

#: The fine-tuning modes, in the order of the paper's tables (train is TLlib's baseline).
MODES = ("train", "eval", "tune", "deploy", "inplace-abn")
#: Bumped when the pretraining code changes what it produces for the same settings.
PRETRAIN_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """What one reproduction run computes (the defaults: about 13 minutes on 2 quiet CPU cores)."""

    arch: str = "resnet18"
    image_size: int = 72  # generated images; crops of input_size are trained on
    input_size: int = 64
    crop_scale: Tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area: the marks are small
    mark_scale: float = 1.5  # species marks 1.5x the quick start's: learnable within the pretraining budget
    data_seed: int = 0
    # source set (pretraining): 30 classes, half of each class's images for training
    source_classes: int = 30
    source_images_per_class: int = 100
    # target set (fine-tuning): other bodies and marks, 30 training images per class as in CUB
    target_classes: int = 20
    target_images_per_class: int = 60
    # pretraining in train mode from random initialisation
    pretrain_epochs: int = 9
    pretrain_iters_per_epoch: int = 100
    pretrain_lr: float = 0.03
    pretrain_milestones: Tuple[int, ...] = (7,)
    pretrain_seed: int = 0
    # fine-tuning: TLlib's recipe (backbone at 0.1 x lr, SGD Nesterov, MultiStepLR per epoch)
    batch_size: int = 32
    epochs: int = 3
    iters_per_epoch: int = 30
    lr: float = 0.02
    lr_milestones: Tuple[int, ...] = (2,)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # the float64 check: a few SGD steps of eval, tune and deploy from the pretrained backbone
    float64_steps: int = 10
    float64_batch: int = 8

    def dataset_params(self, variant: str) -> Dict[str, Any]:
        """Keyword arguments of the synthetic "source" or "target" set (``get_dataset("synthetic", ...)``)."""
        if variant not in ("source", "target"):
            raise ValueError(f"variant must be 'source' or 'target', got {variant!r}")
        source = variant == "source"
        return dict(
            variant=variant,
            seed=self.data_seed,
            num_classes=self.source_classes if source else self.target_classes,
            images_per_class=self.source_images_per_class if source else self.target_images_per_class,
            image_size=self.image_size,
            mark_scale=self.mark_scale,
        )

    def pretrain_identity(self) -> Dict[str, Any]:
        """Everything that determines the pretrained backbone (and nothing else): its cache key."""
        return {
            "version": PRETRAIN_VERSION,
            "arch": self.arch,
            "source": self.dataset_params("source"),
            "input_size": self.input_size,
            "crop_scale": list(self.crop_scale),
            "batch_size": self.batch_size,
            "epochs": self.pretrain_epochs,
            "iters_per_epoch": self.pretrain_iters_per_epoch,
            "lr": self.pretrain_lr,
            "milestones": list(self.pretrain_milestones),
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "seed": self.pretrain_seed,
        }

    def for_pretraining(self) -> Settings:
        """These settings with the fine-tuning recipe's fields set to the pretraining's (for ``fit``)."""
        return dataclasses.replace(
            self,
            lr=self.pretrain_lr,
            epochs=self.pretrain_epochs,
            iters_per_epoch=self.pretrain_iters_per_epoch,
            lr_milestones=self.pretrain_milestones,
        )

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DEFAULT = Settings()
#: ``--fast``: the same experiment shrunk to seconds of compute (tiny images, a few steps), for the tests.
FAST = dataclasses.replace(
    DEFAULT,
    image_size=40,
    input_size=32,
    source_classes=10,
    source_images_per_class=20,
    target_classes=10,
    target_images_per_class=16,
    pretrain_epochs=2,
    pretrain_iters_per_epoch=15,
    pretrain_milestones=(1,),
    batch_size=16,
    epochs=2,
    iters_per_epoch=5,
    lr_milestones=(1,),
    float64_steps=3,
    float64_batch=4,
)


def settings_checksum(description: Mapping[str, Any], length: int = 12) -> str:
    """A stable hex digest (``length`` characters) of a JSON-able description: key order does not matter."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
