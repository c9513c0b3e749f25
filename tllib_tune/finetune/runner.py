"""One fine-tuning run in clear phases: build, resume, fit, finish (or, for `phase` test, build and test).

    from tllib_tune.finetune import FinetuneConfig, Runner

    config = FinetuneConfig(dataset="cub200", arch="resnet50", mode="tune", log="runs/cub")
    final = Runner(config).run()          # {"test_acc1": ..., "chance_acc1": ...}

TLlib's recipe (see :mod:`tllib_tune.engine`); the backbone's mode follows `mode_schedule`. Everything
a run writes lands in its run directory (`log`): TensorBoard events (tb/), metrics.jsonl, summary.json and
checkpoints/{latest,best}.pt. SIGINT/SIGTERM save latest.pt and raise :class:`Stopped`; a run resumed
from it (`resume`) carries on exactly where it stopped. Errors the user can fix raise
:class:`FinetuneError` naming the settings as `name`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..engine import (
    DataLoadingError,
    NonFiniteLossError,
    amp_dtype,
    build_optimizer,
    convert_sync_batchnorm,
    train_one_epoch,
    validate,
)
from ..utils.checkpoint import CheckpointError, load_checkpoint, load_model_state, set_rng_state, unwrap_model
from ..utils.data import EpochBatchSampler, SeededDataset
from ..utils.distributed import ProcessEnv
from ..utils.feature_maps import batch_statistics_problem
from ..utils.signals import StopFlag
from .build import (
    DataSplits,
    apply_mode,
    build_datasets,
    build_model,
    eval_loader,
    seed_everything,
    setup_device,
)
from .callbacks import CheckpointHook, Hook, MetricsHook, ModeScheduleHook
from .config import FinetuneConfig
from .errors import Diverged, FinetuneError, Stopped, divergence_advice, out_of_memory_advice
from .results import EpochResult, EvalResult, TrainResult
from .schedule import mode_for_epoch

__all__ = ["Runner", "RunState", "resolve_log_dir"]

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
#: Settings that may differ between a run and its resume without a note.
_RESUME_MAY_CHANGE = ("resume", "log", "phase", "quick_start", "config")


def resolve_log_dir(config: FinetuneConfig) -> Path:
    """`log`, else the run of the `resume` checkpoint, else runs/<dataset>_<arch>_<mode>_<time>."""
    if config.log is not None:
        return Path(config.log)
    if config.resume is not None and Path(config.resume).parent.name == "checkpoints":
        return Path(config.resume).parent.parent
    mode = config.mode if config.mode_schedule is None else "schedule"
    return Path("runs", f"{config.dataset}_{config.arch}_{mode}_{time.strftime('%Y%m%d-%H%M%S')}")


@dataclass
class RunState:
    """Where the run stands: the next step to run, the best held-out accuracy so far, and the metrics
    of the steps of an epoch interrupted before the resume."""

    start_epoch: int = 0
    start_iter: int = 0
    best_val_acc1: Optional[float] = None
    best_epoch: Optional[int] = None
    partial: Optional[TrainResult] = None


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The console of processes other than the main one."""


class Runner:
    """Fine-tune ``config``'s backbone; :meth:`run` does every phase and returns the final figures.

    Args:
        config: the run's settings.
        env: the process layout (default: torchrun's environment).
        hooks: more :class:`~tllib_tune.finetune.callbacks.Hook` objects, called after the runner's own.
        say: prints a line of progress (main process only).
        name: names the program in the notice a signal prints.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        *,
        env: Optional[ProcessEnv] = None,
        hooks: Sequence[Hook] = (),
        say: Callable[[str], None] = print,
        name: str = "",
    ) -> None:
        self.config = config
        self.env = env or ProcessEnv.from_environ()
        self.say = say if self.env.is_main else _quiet
        self.name = name
        self.log_dir = resolve_log_dir(config)
        self.checkpoint_path: Optional[str] = config.resume
        self.checkpoints = CheckpointHook()
        self.metrics = MetricsHook()
        self.hooks: List[Hook] = [ModeScheduleHook(), self.metrics, self.checkpoints, *hooks]
        for hook in self.hooks:
            hook.runner = self
        self.state = RunState()
        self.current_mode: Optional[str] = None
        self.checkpoint: Optional[Dict[str, Any]] = None
        self.stop = StopFlag(name)
        self.last_val: Optional[EvalResult] = None

    # ---- the whole run -------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Build, then test (`phase` test) or resume, fit and finish; returns the final figures.
        Running out of memory and a failing batch become :class:`FinetuneError` with the fix."""
        try:
            self.build()
            if self.config.phase == "test":
                return self.test()
            self.resume()
            self.fit()
            return self.finish()
        except DataLoadingError as exc:
            config = self.config
            raise FinetuneError(
                f"loading a batch of {config.dataset} from {config.root!r} failed: {exc}"
            ) from exc
        except OUT_OF_MEMORY as exc:
            raise self._out_of_memory(exc) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc) or "can't allocate memory" in str(exc):
                raise self._out_of_memory(exc) from exc
            raise
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    def _out_of_memory(self, exc: BaseException) -> FinetuneError:
        config = self.config
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mode = config.mode_schedule or config.mode
        return FinetuneError(
            out_of_memory_advice(mode, config.batch_size, config.input_size, config.amp, detail)
        )

    # ---- build ---------------------------------------------------------------------------------------
    def build(self) -> None:
        """Device, the checkpoint to start from (first: a wrong one fails before anything is fetched),
        data sets, the model and its optimizer; a checkpoint's weights are loaded here."""
        config = self.config
        self.device = setup_device(config, self.env)
        self.amp_dtype = amp_dtype(config.amp)
        if config.quick_start:
            self.say(self._quick_start_banner())
        seed_everything(config.seed)
        self.checkpoint = self.read_checkpoint()
        self.data: DataSplits = build_datasets(config, self.env)
        # a checkpoint holds every weight of the model: no pretrained weights to fetch (or be offline for)
        model, self.weights = build_model(
            config, self.data.num_classes, self.env, load_weights=self.checkpoint is None
        )
        if self.checkpoint is not None:
            self.weights = f"weights from checkpoint {self.checkpoint_path}"
        self.model = self._prepare_model(model)
        self.optimizer, self.scheduler = build_optimizer(
            unwrap_model(self.model).get_parameters(config.lr),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.wd,
            milestones=config.lr_decay_epochs,
            gamma=config.lr_gamma,
        )
        self.scaler = None
        if config.amp == "fp16":  # float16 needs loss scaling; bfloat16 has float32's range and does not
            amp = torch.amp if hasattr(torch.amp, "GradScaler") else torch.cuda.amp  # torch < 2.3: cuda.amp
            self.scaler = amp.GradScaler("cuda") if amp is torch.amp else amp.GradScaler()
        if self.checkpoint is not None:
            try:
                load_model_state(
                    self.model, self.checkpoint["model"], source=f"checkpoint {self.checkpoint_path!r}"
                )
            except CheckpointError as exc:
                raise FinetuneError(str(exc)) from None
        self.test_loader = eval_loader(self.data.test, config, self.env, self.device)

    def _quick_start_banner(self) -> str:
        config = self.config
        steps = f"{config.epochs} epochs x {config.iters_per_epoch} steps of batch {config.batch_size}"
        return (
            f"Quick start (offline): a synthetic fine-grained data set generated under {config.root} on "
            f"first use, random initialisation (no pretrained download), {config.arch} at "
            f"{config.input_size} px, {steps}, modes by epoch {config.mode_schedule or config.mode} (train "
            "mode first: a random network has no BatchNorm statistics for tune mode to use), on "
            f"{self.device}. About 1.5 min on 2 CPU cores.\n"
        )

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        """In-Place ABN conversion, device and memory format, the batch-statistics check, SyncBatchNorm."""
        config, env = self.config, self.env
        modes_used = config.modes_used
        if config.mode == "inplace-abn" and config.mode_schedule is None:
            apply_mode(model, "inplace-abn")
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.phase == "train":
            # per process, or over all of them where sync_bn pools the statistics
            images = config.batch_size * (env.world_size if config.sync_bn and env.distributed else 1)
            problem = batch_statistics_problem(
                model, [images], [config.input_size], modes_used, name=config.arch
            )
            if problem:
                raise FinetuneError(problem)
        if config.sync_bn:
            if env.distributed and "train" in modes_used:
                model = convert_sync_batchnorm(model)  # swaps BN children: ConvBN blocks stay
            elif env.distributed:
                self.say(f"note: `sync_bn` has no effect in {'/'.join(modes_used)} mode (running statistics)")
            else:
                self.say("note: `sync_bn` has no effect in a single process")
        return model

    def read_checkpoint(self) -> Optional[Dict[str, Any]]:
        """The checkpoint the run starts from (`resume`, or for `phase` test the run's best.pt, else
        latest.pt), checked against `arch`; None for a fresh training run, which must not write over an
        existing one."""
        config, ckpt_dir = self.config, self.log_dir / "checkpoints"
        if config.phase == "test" and self.checkpoint_path is None:
            found = [ckpt_dir / name for name in ("best.pt", "latest.pt") if (ckpt_dir / name).exists()]
            if not found:
                raise FinetuneError(
                    "`phase` test needs a checkpoint: give `resume` FILE, or `log` of a run with checkpoints"
                )
            self.checkpoint_path = str(found[0])
        if self.checkpoint_path is None:
            if config.phase == "train" and (ckpt_dir / "latest.pt").exists():
                raise FinetuneError(
                    f"{self.log_dir} already holds a run; add `resume` {ckpt_dir / 'latest.pt'} to carry it "
                    "on, or choose another `log`"
                )
            return None
        try:
            checkpoint = load_checkpoint(self.checkpoint_path)
        except CheckpointError as exc:
            raise FinetuneError(str(exc)) from None
        saved_arch = checkpoint.get("args", {}).get("arch")
        if saved_arch is not None and saved_arch != config.arch:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} was made with `arch` {saved_arch}, but this run uses "
                f"`arch` {config.arch}; use the same `arch`"
            )
        return checkpoint

    # ---- test ----------------------------------------------------------------------------------------
    def test(self) -> Dict[str, Any]:
        """Evaluate the checkpoint on the test split, in the mode of the schedule's last epoch."""
        apply_mode(self.model, mode_for_epoch(self.config.schedule, self.config.epochs - 1))
        result = self.evaluate(self.test_loader, "test")
        self.say(
            f"test: acc1 {result.acc1:.2f}  loss {result.loss:.4f}  ({result.count} images, "
            f"checkpoint {self.checkpoint_path})"
        )
        return {"test_acc1": result.acc1, "test_loss": result.loss, "count": result.count}

    def evaluate(self, loader: DataLoader, desc: str, stoppable: bool = False) -> EvalResult:
        """One pass of the plain model over ``loader`` (stopped early by a signal when ``stoppable``)."""
        stats = validate(
            unwrap_model(self.model),
            loader,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
            progress=self.env.is_main,
            desc=desc,
            should_stop=self.stop if stoppable else None,
        )
        return EvalResult.from_stats(stats)

    # ---- resume --------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore optimizer, scheduler, scaler, RNG and progress from the checkpoint, if any."""
        checkpoint, config = self.checkpoint, self.config
        if checkpoint is None:
            return
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} has an optimizer state that does not fit: {exc}"
            ) from None
        partial = checkpoint.get("partial")
        self.state = RunState(
            start_epoch=int(checkpoint["epoch"]),
            start_iter=int(checkpoint["iteration"]),
            best_val_acc1=checkpoint.get("best_val_acc1"),
            best_epoch=checkpoint.get("best_epoch"),
            partial=TrainResult.from_stats(partial) if partial else None,
        )
        set_rng_state(checkpoint["rng"])
        start = self.state
        self.say(f"resuming from {self.checkpoint_path}: epoch {start.start_epoch}, step {start.start_iter}")
        saved = checkpoint.get("args", {})
        differ = [
            f"`{k}` {saved[k]} -> {v}"
            for k, v in config.to_dict().items()
            if k in saved and k not in _RESUME_MAY_CHANGE and saved[k] != v
        ]
        if differ:
            self.say("note: these settings differ from the saved run: " + "; ".join(differ))
        if self.state.start_epoch >= config.epochs:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} has already finished {self.state.start_epoch} epochs "
                f"(`epochs` {config.epochs}); raise `epochs` to train longer"
            )

    # ---- fit -----------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the state's epoch to `epochs`, evaluating after every epoch; a signal saves
        latest.pt and raises :class:`Stopped`, a non-finite loss raises :class:`Diverged`."""
        self._prepare_training()
        self._describe()
        self._call("before_train")
        with self.stop:
            try:
                for epoch in range(self.state.start_epoch, self.config.epochs):
                    self.run_epoch(epoch)
            except NonFiniteLossError as exc:
                raise self._diverged(exc) from None
            except Stopped:
                self._call("after_train", "interrupted")
                latest = self.log_dir / "checkpoints" / "latest.pt"
                self.say(f"stopped: saved {latest}; carry on with the same command plus `resume` {latest}")
                raise

    def _prepare_training(self) -> None:
        """DistributedDataParallel, and the loaders of the training stream and of the per-epoch evaluation."""
        config, env = self.config, self.env
        if env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters="deploy" in config.modes_used,  # deploy leaves gamma out of the graph
            )
        self.sampler = EpochBatchSampler(
            len(self.data.train),
            config.batch_size,
            config.iters_per_epoch,
            seed=config.seed,
            rank=env.rank,
            world_size=env.world_size,
        )
        self.train_loader = DataLoader(
            SeededDataset(self.data.train),
            batch_sampler=self.sampler,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.workers > 0,
        )
        has_val = self.data.val is not None
        self.val_loader = (
            eval_loader(self.data.val, config, env, self.device) if has_val else self.test_loader
        )

    def _describe(self) -> None:
        config, data = self.config, self.data
        n_params = sum(p.numel() for p in unwrap_model(self.model).parameters())
        n_val = len(data.val) if data.val is not None else 0
        self.say(f"run directory: {self.log_dir}")
        self.say(
            f"{config.dataset}: {len(data.train)} train / {n_val} val / {len(data.test)} test images, "
            f"{data.num_classes} classes (chance {100 / data.num_classes:.1f}%)"
        )
        self.say(
            f"{config.arch} ({n_params / 1e6:.1f} M parameters), {self.weights}; backbone lr "
            f"{'0.1x' if unwrap_model(self.model).finetune else '1x'}; {self.env.world_size} process(es) on "
            f"{self.device}, batch {config.batch_size}/process, amp {config.amp}"
        )
        if config.val_ratio == 0:
            self.say(
                "no `val_ratio`: no model selection; val/* in TensorBoard is the test split, the final epoch "
                "counts"
            )

    def run_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch (from the resume step in the first), evaluate, step the learning rate."""
        self._call("before_epoch", epoch)
        first = epoch == self.state.start_epoch
        partial, begin = (self.state.partial, self.state.start_iter) if first else (None, 0)
        self.state.partial = None
        if self.stop():
            self._save_and_stop(epoch, begin, partial)
        train = self._train(epoch, begin).merged_with(partial)
        if train.stopped:
            self._save_and_stop(epoch, train.next_iter, train)
        val = self.evaluate(self.val_loader, self.data.val_name, stoppable=True)
        if val.stopped:
            self._save_and_stop(epoch, self.config.iters_per_epoch, train)
        self.last_val = val
        self.scheduler.step()
        result = EpochResult(epoch, self.current_mode or "", train, val, self.data.val_name)
        self._call("after_epoch", result)
        return result

    def _train(self, epoch: int, begin: int) -> TrainResult:
        self.sampler.set_epoch(epoch, begin)
        stats = train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            epoch=epoch,
            iters_per_epoch=self.config.iters_per_epoch,
            start_iter=begin,
            device=self.device,
            scaler=self.scaler,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
            on_step=lambda step, values: self._call("after_step", epoch, step, values),
            should_stop=self.stop,
            progress=self.env.is_main,
        )
        return TrainResult.from_stats(stats)

    def _save_and_stop(self, epoch: int, iteration: int, partial: Optional[TrainResult]) -> None:
        """The one way a signal ends a run: save latest.pt at (epoch, iteration), raise Stopped."""
        self.checkpoints.save_latest(epoch, iteration, partial)
        raise Stopped(self.stop.signum or signal.SIGINT)

    def _diverged(self, exc: NonFiniteLossError) -> Diverged:
        latest = self.log_dir / "checkpoints" / "latest.pt"
        kept = f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was written yet"
        where = {"epoch": exc.epoch, "iteration": exc.iteration, "loss": exc.value}
        self._call("after_train", "diverged", diverged_at=where)
        config = self.config
        advice = divergence_advice(self.current_mode or config.mode, config.amp, config.pretrained)
        step = exc.epoch * config.iters_per_epoch + exc.iteration
        return Diverged(
            f"the loss became {exc.value} at epoch {exc.epoch}, iteration {exc.iteration} (global step "
            f"{step}) in {self.current_mode} mode; stopped without saving, {kept}. {advice}"
        )

    # ---- finish --------------------------------------------------------------------------------------
    def finish(self) -> Dict[str, Any]:
        """The final figures: the last epoch's test accuracy, or with a held-out split the final and the
        best-on-val model's; written to summary.json and TensorBoard's HParams, and said."""
        final = self._final_figures()
        final["chance_acc1"] = 100.0 / self.data.num_classes
        self._call("after_train", "completed", **final)
        line = f"final test acc1 {final['test_acc1']:.2f}% (chance {final['chance_acc1']:.1f}%)"
        if "best_test_acc1" in final:
            line += f"; best on val (epoch {final['best_epoch']}): test acc1 {final['best_test_acc1']:.2f}%"
        self.say(line + f"; summary in {self.log_dir / 'summary.json'}")
        return final

    def _final_figures(self) -> Dict[str, Any]:
        if self.data.val is None:
            return {"test_acc1": self.last_val.acc1, "test_loss": self.last_val.loss}
        test = self.evaluate(self.test_loader, "test")
        final = {
            "test_acc1": test.acc1,
            "test_loss": test.loss,
            "best_val_acc1": self.state.best_val_acc1,
            "best_epoch": self.state.best_epoch,
        }
        best_path = self.log_dir / "checkpoints" / "best.pt"
        self.env.barrier()
        if best_path.exists():
            load_model_state(self.model, load_checkpoint(best_path)["model"])
            final["best_test_acc1"] = self.evaluate(self.test_loader, "test (best)").acc1
        return final

    def _call(self, event: str, *args: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args, **kwargs)
