"""The training and evaluation loop shared by examples/finetune.py and the tests.

TLlib's recipe: a fixed number of iterations per epoch drawn from an endless, reshuffled, drop_last
stream of batches (see :class:`tllib_tune.utils.data.EpochBatchSampler`), cross-entropy, SGD with
Nesterov momentum and weight decay, the backbone at 0.1x the learning rate
(``Classifier.get_parameters``) and a MultiStepLR stepped once per epoch (:func:`build_optimizer`).

:func:`train_one_epoch` also measures what the paper compares across modes: time per iteration, data
time, throughput, the saved-for-backward bytes of one iteration and the peak memory.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .utils.memory import MIB, SavedTensorMeter
from .utils.meters import AverageMeter, accuracy

__all__ = [
    "NonFiniteLossError",
    "DataLoadingError",
    "build_optimizer",
    "train_one_epoch",
    "validate",
    "peak_memory_gb",
    "reset_peak_memory",
    "amp_dtype",
    "autocast_context",
    "convert_sync_batchnorm",
]

GIB = 1024**3
StepCallback = Callable[[int, Dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The loss became inf or NaN; raised before the step, so the weights are still the last finite ones."""

    def __init__(self, epoch: int, iteration: int, value: float) -> None:
        self.epoch, self.iteration, self.value = epoch, iteration, value
        super().__init__(f"loss is {value} at epoch {epoch}, iteration {iteration}")


class DataLoadingError(RuntimeError):
    """Loading a batch failed (a missing or corrupt image, a broken data set root)."""


def build_optimizer(
    param_groups: Union[Iterable[Tensor], List[Dict[str, Any]]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    milestones: Sequence[int] = (12,),
    gamma: float = 0.1,
) -> tuple:
    """TLlib's optimizer and schedule: SGD(momentum, nesterov=True, weight_decay) and MultiStepLR.

    ``param_groups`` usually comes from ``Classifier.get_parameters(lr)`` (backbone at 0.1x lr).
    The scheduler is meant to be stepped once per epoch.
    """
    optimizer = torch.optim.SGD(
        param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    return optimizer, scheduler


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm for SyncBatchNorm (Train mode across processes), keeping each ConvBN block.

    PyTorch's converter replaces BatchNorm *children*, so a ConvBN keeps its class, its mode and its
    state_dict keys; only its ``.bn`` becomes a SyncBatchNorm holding the same parameters and statistics.
    Eval, Tune and Deploy use the running statistics and never synchronise.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def amp_dtype(amp: str) -> Optional[torch.dtype]:
    """The autocast dtype of a mixed-precision choice: "none" (None), "fp16" or "bf16"."""
    choices = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if amp not in choices:
        raise ValueError(f"amp must be one of {', '.join(choices)}, got {amp!r}")
    return choices[amp]


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]) -> Any:
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op context when it is None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory in GiB: CUDA's max allocated since the last reset, or on CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB  # bytes on macOS, KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _to_device(images: Tensor, target: Tensor, device: torch.device, channels_last: bool) -> tuple:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=True)


def _next_batch(iterator: Any) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        raise
    except Exception as exc:  # worker errors arrive re-raised with the worker's traceback in the text
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = lines[-1] if lines else f"{type(exc).__name__} while loading a batch"
        message = re.sub(
            r"^[\w.]*(?:Error|Exception|Warning): ", "", message
        )  # the worker's "pkg.SomeError: "
        raise DataLoadingError(message) from exc


def _forward(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    measure: bool,
) -> tuple:
    """The model's output and the loss; with ``measure``, also the MiB saved for backward (else None)."""
    meter = SavedTensorMeter(exclude=[model]) if measure else nullcontext()
    with meter, autocast_context(device, amp_dtype):
        output = model(images)
        loss = criterion(output.float(), target)
    return output, loss, meter.bytes / MIB if measure else None  # type: ignore[union-attr]


def _agree(finite: bool, stop: bool, world: int, device: torch.device) -> tuple:
    """(finite, stop) as every rank sees them: non-finite or stopping anywhere counts everywhere."""
    if world > 1:
        flags = torch.tensor([0.0 if finite else 1.0, 1.0 if stop else 0.0], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        finite, stop = flags[0].item() == 0.0, flags[1].item() > 0.0
    return finite, stop


def _optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: Optional[Any]) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


class _EpochMeters:
    """Loss and accuracy over the epoch's images; iteration and data time over its timed steps."""

    def __init__(self) -> None:
        self.losses, self.top1 = AverageMeter("loss"), AverageMeter("acc1")
        self.iter_times, self.data_times = AverageMeter("time"), AverageMeter("data")
        self.activations_mb = float("nan")
        self.batch_size = 0

    def update(self, loss: float, acc1: float, n: int, times: Optional[tuple]) -> None:
        self.losses.update(loss, n)
        self.top1.update(acc1, n)
        self.batch_size = n
        if times is not None:
            self.iter_times.update(times[0])
            self.data_times.update(times[1])

    def result(self, lr: float, device: torch.device, world: int, ran: int, step: int, stopped: bool) -> dict:
        timed = self.iter_times.count
        iter_time = self.iter_times.avg if timed else float("nan")
        return {
            "loss": self.losses.avg,
            "acc1": self.top1.avg,
            "lr": lr,
            "iter_time_s": iter_time,
            "data_time_s": self.data_times.avg if self.data_times.count else float("nan"),
            "images_per_s": self.batch_size * world / iter_time if timed and iter_time > 0 else float("nan"),
            "activations_mb": self.activations_mb,
            "peak_gb": peak_memory_gb(device),
            "iterations": float(ran),
            "next_iter": float(step),
            "stopped": 1.0 if stopped else 0.0,
        }


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int = 0,
    iters_per_epoch: Optional[int] = None,
    start_iter: int = 0,
    device: Union[str, torch.device] = "cpu",
    criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    scaler: Optional[Any] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    measure_activations: bool = True,
    on_step: Optional[StepCallback] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """Train for one epoch (steps ``start_iter`` .. ``iters_per_epoch - 1``) and return its metrics.

    Returns ``loss``, ``acc1`` (averages over the epoch's images), ``lr`` (first group),
    ``iter_time_s`` and ``data_time_s`` (mean per iteration, leaving out the first, measured one),
    ``images_per_s`` (all processes together), ``activations_mb`` (saved-for-backward MiB of the first
    iteration), ``peak_gb``, ``iterations`` (steps run) and ``next_iter`` (the step to resume from:
    ``iters_per_epoch`` unless ``should_stop`` asked to stop early; then ``stopped`` is 1.0).

    ``on_step(iteration, {"loss", "acc1", "lr"})`` is called after every step. A non-finite loss raises
    :class:`NonFiniteLossError` before the optimizer step; a failing batch raises :class:`DataLoadingError`.
    Under torch.distributed, every rank stops at the same step.
    """
    device = torch.device(device)
    criterion = criterion or F.cross_entropy
    total = iters_per_epoch if iters_per_epoch is not None else len(loader)  # type: ignore[arg-type]
    world = dist.get_world_size() if _distributed() else 1
    meters, step, ran, stopped = _EpochMeters(), start_iter, 0, False
    model.train()
    reset_peak_memory(device)
    iterator = iter(loader)
    disable = None if progress else True
    bar = tqdm(
        total=total, initial=start_iter, desc=f"epoch {epoch} train", disable=disable, dynamic_ncols=True
    )
    try:
        while step < total and not stopped:
            start = time.perf_counter()
            images, target = _to_device(*_next_batch(iterator), device, channels_last)
            data_time = time.perf_counter() - start
            measure = measure_activations and ran == 0
            output, loss, saved_mb = _forward(model, images, target, criterion, device, amp_dtype, measure)
            if measure:
                meters.activations_mb = saved_mb
            loss_value = loss.item()
            stop_now = bool(should_stop()) if should_stop is not None else False
            finite, stopped = _agree(math.isfinite(loss_value), stop_now, world, device)
            if not finite:
                raise NonFiniteLossError(epoch, step, loss_value)
            _optimizer_step(loss, optimizer, scaler)
            _sync(device)
            timed = not measure or total - start_iter == 1
            times = (time.perf_counter() - start, data_time) if timed else None
            acc1 = accuracy(output.detach(), target)[0]
            meters.update(loss_value, acc1, images.size(0), times)
            if on_step is not None:
                on_step(step, {"loss": loss_value, "acc1": acc1, "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{meters.losses.avg:.4f}", acc1=f"{meters.top1.avg:.1f}", refresh=False)
            bar.update(1)
            step, ran = step + 1, ran + 1
    finally:
        bar.close()
    return meters.result(optimizer.param_groups[0]["lr"], device, world, ran, step, stopped)


def _sum_over_ranks(totals: Tensor, stopped: bool, device: torch.device) -> tuple:
    """Under torch.distributed: the totals summed over every rank, and whether any rank stopped."""
    if not _distributed():
        return totals, stopped
    flags = torch.cat([totals, torch.tensor([1.0 if stopped else 0.0], dtype=torch.float64)])
    flags = flags.to(device)
    dist.all_reduce(flags)
    flags = flags.cpu()
    return flags[:4], bool(flags[4].item() > 0)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: Union[str, torch.device] = "cpu",
    criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    progress: bool = True,
    desc: str = "val",
) -> Dict[str, float]:
    """Evaluate ``model`` (in ``model.eval()``) and return ``loss``, ``acc1``, ``acc5`` and ``count``.

    Under torch.distributed each rank evaluates its own shard and the totals are summed across ranks
    (pass the plain module, not the DDP wrapper, so that shards may differ in size). ``stopped`` is 1.0
    when ``should_stop`` interrupted the pass on any rank.
    """
    device = torch.device(device)
    criterion = criterion or F.cross_entropy
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 correct, top-5 correct, count
    stopped = False
    iterator = iter(loader)
    bar = tqdm(
        total=len(loader), desc=desc, disable=None if progress else True, dynamic_ncols=True, leave=False
    )  # type: ignore[arg-type]
    try:
        while True:
            if should_stop is not None and should_stop():
                stopped = True
                break
            try:
                images, target = _next_batch(iterator)
            except StopIteration:
                break
            images, target = _to_device(images, target, device, channels_last)
            with autocast_context(device, amp_dtype):
                output = model(images)
            output = output.float()
            n = target.size(0)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            totals += torch.tensor(
                [criterion(output, target).item() * n, acc1 * n / 100, acc5 * n / 100, n],
                dtype=torch.float64,
            )
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    totals, stopped = _sum_over_ranks(totals, stopped, device)
    count = totals[3].item()
    return {
        "loss": totals[0].item() / count if count else float("nan"),
        "acc1": 100.0 * totals[1].item() / count if count else float("nan"),
        "acc5": 100.0 * totals[2].item() / count if count else float("nan"),
        "count": count,
        "stopped": 1.0 if stopped else 0.0,
    }
