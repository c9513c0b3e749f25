"""Running averages and top-k accuracy: the small bookkeeping pieces of a training loop."""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

__all__ = ["AverageMeter", "accuracy"]


class AverageMeter:
    """Weighted running average of a scalar (e.g. the loss over the images seen so far).

    Example::

        losses = AverageMeter("loss")
        losses.update(loss.item(), n=images.size(0))
        print(losses.avg)
    """

    def __init__(self, name: str = "", fmt: str = ":.4f") -> None:
        self.name = name
        self.fmt = fmt
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.sum = 0.0
        self.count = 0
        self.avg = 0.0

    def update(self, val: float, n: int = 1) -> None:
        """Add ``val`` observed ``n`` times (``n`` is usually the batch size)."""
        if n < 0:
            raise ValueError(f"AverageMeter.update: n must be >= 0, got {n}")
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0

    def __str__(self) -> str:
        template = "{name} {val" + self.fmt + "} ({avg" + self.fmt + "})"
        return template.format(name=self.name, val=self.val, avg=self.avg)


def accuracy(output: Tensor, target: Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """Top-k accuracy in percent for each k in ``topk``.

    ``output`` holds logits [N, C], ``target`` class indices [N]. A k larger than C counts every
    sample as correct, as the prediction then covers all classes.
    """
    if output.dim() != 2 or target.dim() != 1 or output.size(0) != target.size(0):
        raise ValueError(
            f"accuracy expects logits [N, C] and targets [N], got {tuple(output.shape)} and "
            f"{tuple(target.shape)}"
        )
    n = target.size(0)
    if n == 0:
        return [0.0 for _ in topk]
    with torch.no_grad():
        maxk = min(max(topk), output.size(1))
        _, pred = output.topk(maxk, dim=1, largest=True, sorted=True)
        correct = pred.eq(target.view(-1, 1))
        return [correct[:, : min(k, maxk)].any(dim=1).float().sum().item() * 100.0 / n for k in topk]
