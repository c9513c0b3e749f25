"""The training and evaluation loop shared by examples/finetune.py and the tests.

TLlib's recipe: a fixed number of iterations per epoch drawn from an endless, reshuffled, drop_last
stream of batches (see :class:`tllib_tune.utils.data.EpochBatchSampler`), cross-entropy, SGD with
Nesterov momentum and weight decay, the backbone at 0.1x the learning rate
(``Classifier.get_parameters``) and a step decay at milestone epochs (:func:`build_optimizer`; a cosine
decay and a linear warm-up are the alternatives timm users know).

:func:`train_one_epoch` also measures what the paper compares across modes: time per iteration, data
time, throughput, the saved-for-backward bytes of one iteration and the peak memory. A step may
accumulate the gradients of several micro-batches (``accum_steps``); under torch.distributed the step's
loss and accuracy are those of every rank's images together.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .progress import progress_bar
from .utils.memory import MIB, SavedTensorMeter
from .utils.meters import AverageMeter, accuracy

__all__ = [
    "NonFiniteLossError",
    "DataLoadingError",
    "SCHEDULES",
    "build_optimizer",
    "lr_factor",
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


#: The learning-rate decays :func:`build_optimizer` knows: TLlib's step decay and timm's cosine.
SCHEDULES = ("step", "cosine")


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int = 1,
    sched: str = "step",
    milestones: Sequence[int] = (12,),
    gamma: float = 0.1,
    epochs: Optional[int] = None,
    warmup_epochs: float = 0.0,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of the base rate.

    "step": ``gamma ** (number of milestones <= the step's epoch)``, constant within an epoch (TLlib's
    MultiStepLR stepped per epoch). "cosine": ``0.5 * (1 + cos(pi * p))`` with ``p`` the fraction of the
    training after the warm-up done, from 1 down to 0 at the end of ``epochs``. A warm-up of
    ``warmup_epochs`` (fractions allowed) first ramps the rate linearly from ``1 / warmup_steps`` to 1.
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if sched == "step":
        epoch = step // steps_per_epoch
        return warmup * gamma ** sum(1 for m in milestones if epoch >= m)
    if sched != "cosine":
        raise ValueError(f"sched must be one of {', '.join(SCHEDULES)}, got {sched!r}")
    if epochs is None:
        raise ValueError("sched 'cosine' needs epochs, the length of the decay")
    span = epochs * steps_per_epoch - warmup_steps
    done = min(1.0, max(0.0, (step - warmup_steps) / span)) if span > 0 else 1.0
    return warmup * 0.5 * (1.0 + math.cos(math.pi * done))


def build_optimizer(
    param_groups: Union[Iterable[Tensor], List[Dict[str, Any]]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    milestones: Sequence[int] = (12,),
    gamma: float = 0.1,
    sched: str = "step",
    epochs: Optional[int] = None,
    warmup_epochs: float = 0.0,
    steps_per_epoch: int = 1,
) -> tuple:
    """TLlib's optimizer, SGD(momentum, nesterov=True, weight_decay), and a LambdaLR of :func:`lr_factor`.

    ``param_groups`` usually comes from ``Classifier.get_parameters(lr)`` (backbone at 0.1x lr). The
    scheduler is meant to be stepped after every optimizer step (``train_one_epoch(scheduler=...)``);
    with the default ``steps_per_epoch=1`` that is once per epoch, as TLlib steps its MultiStepLR. Its
    state is the number of steps done: the schedule itself comes from these arguments, so a resumed run
    follows the settings it is resumed with.
    """
    optimizer = torch.optim.SGD(
        param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )
    options = dict(sched=sched, milestones=tuple(milestones), gamma=gamma, epochs=epochs)
    lr_factor(0, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs, **options)  # checks them

    def factor(step: int) -> float:  # a plain function: LambdaLR keeps it out of its state_dict
        return lr_factor(step, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs, **options)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _no_sync(model: nn.Module) -> Any:
    """DistributedDataParallel's ``no_sync`` (gradients stay local until the step's last micro-batch),
    or a no-op in a single process."""
    no_sync = getattr(model, "no_sync", None)  # also found through torch.compile's wrapper
    return no_sync() if no_sync is not None and _distributed() else nullcontext()


class _Step(NamedTuple):
    """One optimizer step's figures over this process's images (sums, so that ranks can add them)."""

    loss_sum: float
    correct: float
    images: int
    saved_mb: Optional[float]


def _accumulate(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    *,
    criterion: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    scaler: Optional[Any],
    accum_steps: int,
    measure: bool,
) -> _Step:
    """Forward and backward of one step's batch in ``accum_steps`` micro-batches. Each micro-batch's mean
    loss is weighted by its share of the images, so the summed gradients are the whole batch's mean
    loss's: without batch statistics (eval, tune, deploy) the step equals one on the whole batch."""
    pieces = list(zip(images.chunk(accum_steps), target.chunk(accum_steps)))
    loss_sum, correct, saved_mb = 0.0, 0.0, None
    for index, (x, y) in enumerate(pieces):
        with nullcontext() if index == len(pieces) - 1 else _no_sync(model):
            output, loss, mb = _forward(model, x, y, criterion, device, amp_dtype, measure and index == 0)
            weighted = loss if len(pieces) == 1 else loss * (x.size(0) / images.size(0))
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        saved_mb = mb if index == 0 else saved_mb
        loss_sum += loss.item() * x.size(0)
        correct += round(accuracy(output.detach(), y)[0] * x.size(0) / 100)
    return _Step(loss_sum, correct, images.size(0), saved_mb)


def _over_ranks(step: _Step, stop: bool, world: int, device: torch.device) -> Tuple[float, float, int, bool]:
    """(loss sum, correct, images, stop) of every rank's part of the step; stopping anywhere counts
    everywhere. One all_reduce per step, which the stop flag needed anyway."""
    values = [step.loss_sum, step.correct, float(step.images), 1.0 if stop else 0.0]
    if world > 1:
        totals = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        values = totals.tolist()
    return values[0], values[1], int(values[2]), values[3] > 0


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: Optional[Any]) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


class _EpochMeters:
    """Loss and accuracy over the epoch's images; iteration and data time over its timed steps."""

    def __init__(self) -> None:
        self.losses, self.top1 = AverageMeter("loss"), AverageMeter("acc1")
        self.iter_times, self.data_times = AverageMeter("time"), AverageMeter("data")
        self.activations_mb = float("nan")
        self.images = 0
        self.lr = float("nan")

    def update(self, loss: float, acc1: float, n: int, times: Optional[tuple]) -> None:
        self.losses.update(loss, n)
        self.top1.update(acc1, n)
        self.images = n
        if times is not None:
            self.iter_times.update(times[0])
            self.data_times.update(times[1])

    def result(self, device: torch.device, ran: int, step: int, stopped: bool) -> dict:
        timed = self.iter_times.count
        iter_time = self.iter_times.avg if timed else float("nan")
        return {
            "loss": self.losses.avg,
            "acc1": self.top1.avg,
            "lr": self.lr,
            "iter_time_s": iter_time,
            "data_time_s": self.data_times.avg if self.data_times.count else float("nan"),
            "images_per_s": self.images / iter_time if timed and iter_time > 0 else float("nan"),
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
    scheduler: Optional[Any] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    accum_steps: int = 1,
    measure_activations: bool = True,
    on_step: Optional[StepCallback] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    progress: bool = True,
    desc: Optional[str] = None,
) -> Dict[str, float]:
    """Train for one epoch (steps ``start_iter`` .. ``iters_per_epoch - 1``) and return its metrics.

    Each step takes one batch from ``loader`` and splits it into ``accum_steps`` micro-batches whose
    gradients add up before the optimizer step (the loader's batch is the step's batch); ``scheduler``
    (if given) is stepped after every optimizer step.

    Returns ``loss``, ``acc1`` (averages over the epoch's images, of every process under
    torch.distributed), ``lr`` (first group, of the last step), ``iter_time_s`` and ``data_time_s`` (mean
    per iteration, leaving out the first, measured one), ``images_per_s`` (all processes together),
    ``activations_mb`` (saved-for-backward MiB of the first micro-batch), ``peak_gb``, ``iterations``
    (steps run) and ``next_iter`` (the step to resume from: ``iters_per_epoch`` unless ``should_stop``
    asked to stop early; then ``stopped`` is 1.0).

    ``on_step(iteration, {"loss", "acc1", "lr", "images"})`` is called after every step with the step's
    figures over every process's images. A non-finite loss raises :class:`NonFiniteLossError` before the
    optimizer step; a failing batch raises :class:`DataLoadingError`. Under torch.distributed, every rank
    stops at the same step. ``desc`` names the progress bar (default "epoch {epoch + 1} train").
    """
    device = torch.device(device)
    criterion = criterion or F.cross_entropy
    total = iters_per_epoch if iters_per_epoch is not None else len(loader)  # type: ignore[arg-type]
    world = dist.get_world_size() if _distributed() else 1
    meters, step, ran, stopped = _EpochMeters(), start_iter, 0, False
    model.train()
    reset_peak_memory(device)
    iterator = iter(loader)
    bar = progress_bar(
        total=total, initial=start_iter, desc=desc or f"epoch {epoch + 1} train", unit="step",
        disable=None if progress else True, dynamic_ncols=True,
    )  # fmt: skip
    with bar:
        while step < total and not stopped:
            start = time.perf_counter()
            images, target = _to_device(*_next_batch(iterator), device, channels_last)
            data_time = time.perf_counter() - start
            measure = measure_activations and ran == 0
            optimizer.zero_grad(set_to_none=True)
            done = _accumulate(
                model, images, target, criterion=criterion, device=device, amp_dtype=amp_dtype,
                scaler=scaler, accum_steps=accum_steps, measure=measure,
            )  # fmt: skip
            if measure:
                meters.activations_mb = done.saved_mb
            stop_now = bool(should_stop()) if should_stop is not None else False
            loss_sum, correct, n, stopped = _over_ranks(done, stop_now, world, device)
            loss_value, acc1 = loss_sum / n, 100.0 * correct / n
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(epoch, step, loss_value)
            meters.lr = optimizer.param_groups[0]["lr"]
            _optimizer_step(optimizer, scaler)
            if scheduler is not None:
                scheduler.step()
            _sync(device)
            timed = not measure or total - start_iter == 1
            times = (time.perf_counter() - start, data_time) if timed else None
            meters.update(loss_value, acc1, n, times)
            if on_step is not None:
                on_step(step, {"loss": loss_value, "acc1": acc1, "lr": meters.lr, "images": float(n)})
            bar.set_postfix(loss=f"{meters.losses.avg:.4f}", acc1=f"{meters.top1.avg:.1f}", refresh=False)
            bar.update(1)
            step, ran = step + 1, ran + 1
    if ran == 0:
        meters.lr = optimizer.param_groups[0]["lr"]
    return meters.result(device, ran, step, stopped)


def _sum_over_ranks(totals: Tensor, stopped: bool, device: torch.device) -> tuple:
    """Under torch.distributed: the totals summed over every rank, and whether any rank stopped."""
    if not _distributed():
        return totals, stopped
    flags = torch.cat([totals, torch.tensor([1.0 if stopped else 0.0], dtype=totals.dtype)])
    flags = flags.to(device)
    dist.all_reduce(flags)
    flags = flags.cpu()
    return flags[:-1], bool(flags[-1].item() > 0)


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
    num_classes: Optional[int] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` (in ``model.eval()``) and return ``loss``, ``acc1``, ``acc5`` and ``count``;
    with ``num_classes`` also ``confusion``, an int64 [num_classes, num_classes] tensor counting the
    images of each true class (row) predicted as each class (column).

    Under torch.distributed each rank evaluates its own shard and the totals are summed across ranks
    (pass the plain module, not the DDP wrapper, so that shards may differ in size). ``stopped`` is 1.0
    when ``should_stop`` interrupted the pass on any rank.
    """
    device = torch.device(device)
    criterion = criterion or F.cross_entropy
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 correct, top-5 correct, count
    confusion = torch.zeros((num_classes or 0) ** 2, dtype=torch.float64)
    stopped = False
    iterator = iter(loader)
    bar = progress_bar(
        total=len(loader),
        desc=desc,
        unit="batch",
        disable=None if progress else True,
        dynamic_ncols=True,
        leave=False,
    )  # type: ignore[arg-type]
    with bar:
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
                _score_batch(output.float(), target, criterion, totals, confusion, num_classes)
                bar.update(1)
        finally:
            model.train(was_training)
    totals, stopped = _sum_over_ranks(torch.cat([totals, confusion]), stopped, device)
    return _validation_result(totals, stopped, num_classes)


def _score_batch(
    output: Tensor,
    target: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    totals: Tensor,
    confusion: Tensor,
    num_classes: Optional[int],
) -> None:
    """Add one batch to :func:`validate`'s running ``totals`` (loss sum, top-1 and top-5 correct, count)
    and, with ``num_classes``, to its flattened ``confusion`` counts (both in place)."""
    n = target.size(0)
    acc1, acc5 = accuracy(output, target, topk=(1, 5))
    totals += torch.tensor(
        [criterion(output, target).item() * n, acc1 * n / 100, acc5 * n / 100, n], dtype=torch.float64
    )
    if num_classes:
        cells = target.cpu() * num_classes + output.argmax(dim=1).cpu()
        confusion += torch.bincount(cells, minlength=num_classes**2).double()


def _validation_result(totals: Tensor, stopped: bool, num_classes: Optional[int]) -> Dict[str, Any]:
    """:func:`validate`'s metrics from the totals of every rank (followed by the confusion counts)."""
    count = totals[3].item()
    result: Dict[str, Any] = {
        "loss": totals[0].item() / count if count else float("nan"),
        "acc1": 100.0 * totals[1].item() / count if count else float("nan"),
        "acc5": 100.0 * totals[2].item() / count if count else float("nan"),
        "count": count,
        "stopped": 1.0 if stopped else 0.0,
    }
    if num_classes:
        result["confusion"] = totals[4:].round().long().view(num_classes, num_classes)
    return result
