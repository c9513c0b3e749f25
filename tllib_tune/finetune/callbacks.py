"""Hooks the fine-tuning runner calls at fixed points of a run (detectron2's HookBase pattern).

The runner's own hooks: :class:`ModeScheduleHook` (the backbone's mode by epoch), :class:`MetricsHook`
(TensorBoard, metrics.jsonl, summary.json, the console line) and :class:`CheckpointHook` (best.pt and
latest.pt). More can be passed to :class:`~tllib_tune.finetune.runner.Runner` (``hooks=[...]``); each
sees the runner as ``self.runner``. They run in that order: schedule, metrics, checkpoints, yours.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..utils.checkpoint import block_modes, save_checkpoint, unwrap_model
from ..utils.logger import RunLogger, read_jsonl
from .build import apply_mode
from .results import EpochResult, TrainResult, summarize
from .schedule import mode_for_epoch

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["Hook", "ModeScheduleHook", "MetricsHook", "CheckpointHook"]


class Hook:
    """Override what you need; ``epoch`` is the epoch's 0-based index and ``step`` the 0-based step
    within it (shown everywhere as epoch ``epoch + 1`` and step ``step + 1``)."""

    runner: Runner

    def before_train(self) -> None:
        """Once, after the build and resume phases, before the first epoch to run."""

    def before_epoch(self, epoch: int) -> None:
        """Before the epoch's first step (also the epoch a resumed run carries on)."""

    def after_step(self, epoch: int, step: int, values: Dict[str, float]) -> None:
        """After every optimizer step; ``values`` holds the step's "loss", "acc1" (over every process's
        images), "lr" and "images"."""

    def after_epoch(self, result: EpochResult) -> None:
        """After the epoch's evaluation and the learning-rate step."""

    def after_train(self, status: str, **extra: Any) -> None:
        """When the run ends: ``status`` "completed" (``extra``: the final figures), "interrupted"
        or "diverged" (``extra``: where)."""


class ModeScheduleHook(Hook):
    """Switches the backbone to each epoch's mode of `mode_schedule` (or `mode`) and says so."""

    def before_epoch(self, epoch: int) -> None:
        runner = self.runner
        mode = mode_for_epoch(runner.config.schedule, epoch)
        if mode == runner.current_mode:
            return
        if mode != "inplace-abn":  # In-Place ABN was converted once, when the model was built
            apply_mode(runner.model, mode)
        counts = block_modes(runner.model)["counts"]
        runner.say(f"epoch {epoch + 1}/{runner.config.epochs}: backbone in {mode} mode ({counts})")
        runner.current_mode = mode


class CheckpointHook(Hook):
    """Writes <log>/checkpoints/best.pt (when the held-out accuracy improves), latest.pt every epoch and
    every `save_every` steps; :meth:`save_latest` is also the one place a stopped run saves."""

    def __init__(self) -> None:
        self.dir: Optional[Path] = None

    def before_train(self) -> None:
        self.dir = self.runner.log_dir / "checkpoints"

    def save(self, name: str, epoch: int, iteration: int, partial: Optional[TrainResult] = None) -> Path:
        """Write checkpoints/``name`` (main process; every process waits for it); ``epoch`` and
        ``iteration`` name the next step to run, ``partial`` the metrics of the epoch's steps so far."""
        runner = self.runner
        path = runner.log_dir / "checkpoints" / name
        if runner.env.is_main:
            runner.metrics.flush()  # the events up to the checkpoint are on disk before it is
            save_checkpoint(
                path,
                runner.model,
                optimizer=runner.optimizer,
                scheduler=runner.scheduler,
                scaler=runner.scaler,
                epoch=epoch,
                iteration=iteration,
                args=runner.config.to_dict(),
                extra={
                    "best_val_acc1": runner.state.best_val_acc1,
                    "best_epoch": runner.state.best_epoch,
                    "partial": partial.to_dict() if partial is not None else None,
                    "num_classes": runner.data.num_classes,
                },
            )
        runner.env.barrier()
        return path

    def save_latest(self, epoch: int, iteration: int, partial: Optional[TrainResult] = None) -> Path:
        """latest.pt at (``epoch`` index, ``iteration``): the next step to run."""
        return self.save("latest.pt", epoch, iteration, partial)

    def after_step(self, epoch: int, step: int, values: Dict[str, float]) -> None:
        config = self.runner.config
        done = epoch * config.iters_per_epoch + step + 1
        if config.save_every and done % config.save_every == 0 and step + 1 < config.iters_per_epoch:
            self.save_latest(epoch, step + 1, self.runner.epoch_so_far.result(step + 1))

    def after_epoch(self, result: EpochResult) -> None:
        state = self.runner.state
        if self.runner.data.val is not None and (
            state.best_val_acc1 is None or result.val.acc1 > state.best_val_acc1
        ):
            state.best_val_acc1, state.best_epoch = result.val.acc1, result.number
            self.save("best.pt", result.epoch + 1, 0)
        self.save_latest(result.epoch + 1, 0)


class MetricsHook(Hook):
    """TensorBoard scalars (train/* every step, perf/*, memory/*, val/* every epoch, HParams at the end),
    one metrics.jsonl record and one console line per epoch, and summary.json after every epoch and at
    the end. A resumed run drops the events and records from its resume point on, so nothing is logged
    twice."""

    def __init__(self) -> None:
        self.logger: Optional[RunLogger] = None
        self.records: List[Dict[str, Any]] = []
        self.summary: Dict[str, Any] = {}
        self.started = 0.0

    def before_train(self) -> None:
        runner = self.runner
        state, resumed = runner.state, runner.checkpoint is not None
        global_step0 = state.start_epoch * runner.config.iters_per_epoch + state.start_iter
        self.logger = RunLogger(
            runner.log_dir,
            enabled=runner.env.is_main,
            purge_step=global_step0 + 1 if resumed else None,
            keep_epochs=state.start_epoch if resumed else None,
        )
        if runner.env.is_main:
            records = read_jsonl(runner.log_dir / "metrics.jsonl")
            self.records = [r for r in records if r.get("epoch", 0) <= state.start_epoch]  # numbered from 1
        self.summary = {"status": "running", **self._description(), **self.hparams()}
        self.started = time.time()

    def _description(self) -> Dict[str, Any]:
        runner, data = self.runner, self.runner.data
        return {
            "args": runner.config.to_dict(),
            "num_classes": data.num_classes,
            "train_size": len(data.train),
            "val_size": len(data.val) if data.val is not None else 0,
            "test_size": len(data.test),
            "device": str(runner.device),
            "world_size": runner.env.world_size,
            "params": sum(p.numel() for p in unwrap_model(runner.model).parameters()),
        }

    def hparams(self) -> Dict[str, Any]:
        """The run's settings in TensorBoard's HParams view (and in summary.json)."""
        config = self.runner.config
        return {
            "dataset": config.dataset,
            "arch": config.arch,
            "mode": config.mode_schedule or config.mode,
            "pretrained": config.pretrained,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "input_size": config.input_size,
            "amp": config.amp,
            "sample_rate": config.sample_rate,
            "seed": config.seed,
            "epochs": config.epochs,
            "iters_per_epoch": config.iters_per_epoch,
            "sched": config.sched,
            "warmup_epochs": config.warmup_epochs,
            "label_smoothing": config.label_smoothing,
            "grad_accum_steps": config.grad_accum_steps,
            "grad_checkpointing": config.grad_checkpointing,
            "compile": config.compile,
            "world_size": self.runner.env.world_size,
        }

    def after_step(self, epoch: int, step: int, values: Dict[str, float]) -> None:
        global_step = epoch * self.runner.config.iters_per_epoch + step + 1
        scalars = {"train/loss": values["loss"], "train/acc1": values["acc1"], "train/lr": values["lr"]}
        self.logger.scalars(scalars, global_step)

    def after_epoch(self, result: EpochResult) -> None:
        runner = self.runner
        self.logger.scalars(result.scalars(), (result.epoch + 1) * runner.config.iters_per_epoch)
        record = result.record()
        self.records.append(record)
        self.logger.epoch_record(record)
        runner.say(result.line(runner.config.epochs))
        self.write_summary("running")

    def flush(self) -> None:
        """Write the buffered TensorBoard events."""
        if self.logger is not None:
            self.logger.flush()

    def write_summary(self, status: str, **extra: Any) -> None:
        """Update summary.json: the status, ``extra``, the time so far and the figures of every epoch."""
        self.summary.update(
            status=status, wall_time_s=time.time() - self.started, epochs_done=len(self.records), **extra
        )
        self.summary.update(summarize(self.records))
        self.summary["modes"] = block_modes(self.runner.model)["counts"]
        self.logger.summary(self.summary)
        self.logger.flush()

    def after_train(self, status: str, **extra: Any) -> None:
        self.write_summary(status, **extra)
        if status != "completed":
            return
        summary = self.summary
        metrics = {
            "hparam/acc1": extra.get("test_acc1"),
            "hparam/val_acc1": extra.get("best_val_acc1"),
            **{f"hparam/{k}": summary.get(k) for k in ("iter_time_s", "activations_mb", "peak_gb")},
        }
        self.logger.hparams(self.hparams(), metrics)
        self.logger.close()
