"""One fine-tuning run in clear phases: build, resume, fit, finish (or, for `phase` test/analysis, build
and evaluate a checkpoint).

    from tllib_tune.finetune import FinetuneConfig, Runner

    config = FinetuneConfig(dataset="cub200", arch="resnet50", mode="tune", log="runs/cub")
    final = Runner(config).run()          # {"test_acc1": ..., "chance_acc1": ...}

TLlib's recipe (see :mod:`tllib_tune.engine`); the backbone's mode follows `mode_schedule`. Everything
a run writes lands in its run directory (`log`): log.txt (the console's lines and progress lines),
TensorBoard events (tb/), metrics.jsonl, summary.json and checkpoints/{latest,best}.pt (analysis/ for
`phase` analysis). SIGINT/SIGTERM save latest.pt and raise :class:`Stopped`; a run resumed from it
(`resume`) carries on exactly where it stopped, as from a `save_every` checkpoint after a SIGKILL.
Epochs are 0-based indices in code and numbered from 1 in everything shown or written ("epoch 2/5").
Errors the user can fix raise :class:`FinetuneError` naming the settings as `name`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..engine import (
    DataLoadingError,
    NonFiniteLossError,
    amp_dtype,
    build_optimizer,
    convert_sync_batchnorm,
    lr_factor,
    train_one_epoch,
    validate,
)
from ..progress import progress_settings
from ..utils.checkpoint import CheckpointError, load_checkpoint, load_model_state, set_rng_state, unwrap_model
from ..utils.checkpointing import enable_grad_checkpointing
from ..utils.data import EpochBatchSampler, SeededDataset
from ..utils.distributed import ProcessEnv
from ..utils.feature_maps import batch_statistics_problem
from ..utils.logger import TextLog
from ..utils.signals import StopFlag, leave_stop_signals_to_main
from .analysis import write_analysis
from .build import (
    DataSplits,
    apply_mode,
    build_datasets,
    build_model,
    build_test_split,
    dataset_classes,
    eval_loader,
    seed_everything,
    setup_device,
)
from .callbacks import CheckpointHook, Hook, MetricsHook, ModeScheduleHook
from .config import TEST_PHASES, FinetuneConfig
from .errors import Diverged, FinetuneError, Stopped, divergence_advice, one_line, out_of_memory_advice
from .results import EpochResult, EvalResult, TrainResult
from .schedule import mode_for_epoch

__all__ = [
    "Runner",
    "RunState",
    "resolve_log_dir",
    "find_test_checkpoint",
    "saved_settings",
    "FROM_CHECKPOINT",
]

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
#: Settings that may differ between a run and its resume without a note.
_RESUME_MAY_CHANGE = ("resume", "log", "phase", "quick_start", "config", "save_every", "progress_interval")
#: What `phase` test/analysis takes from the checkpoint's saved settings unless given: the data set and
#: the model it was trained on, and how it computed (the schedule's last mode).
FROM_CHECKPOINT = (
    "dataset", "root", "dataset_options", "val_ratio", "seed", "arch", "input_size", "batch_size",
    "mode", "mode_schedule", "epochs", "channels_last",
)  # fmt: skip
#: Write errors that mean the run directory cannot be used (rather than a bug).
_WRITE_ERRORS = (
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
)


def resolve_log_dir(config: FinetuneConfig) -> Path:
    """`log`, else the run of the `resume` checkpoint, else runs/<dataset>_<arch>_<mode>_<time>."""
    if config.log is not None:
        return Path(config.log)
    if config.resume is not None and Path(config.resume).parent.name == "checkpoints":
        return Path(config.resume).parent.parent
    mode = config.mode if config.mode_schedule is None else "schedule"
    return Path("runs", f"{config.dataset}_{config.arch}_{mode}_{time.strftime('%Y%m%d-%H%M%S')}")


def find_test_checkpoint(log: Optional[str], resume: Optional[str]) -> Optional[Path]:
    """The checkpoint a test phase evaluates: `resume`, else <log>/checkpoints/best.pt, else latest.pt;
    None when there is none."""
    if resume is not None:
        return Path(resume)
    if log is None:
        return None
    found = [Path(log, "checkpoints", name) for name in ("best.pt", "latest.pt")]
    return next((path for path in found if path.is_file()), None)


def saved_settings(log: Optional[str], resume: Optional[str]) -> Dict[str, Any]:
    """The :data:`FROM_CHECKPOINT` settings saved in the test phase's checkpoint (empty when there is no
    readable one: the runner then says what is wrong). A command line layers them between a config
    file and its flags (:func:`tllib_tune.finetune.cli.config_from`)."""
    path = find_test_checkpoint(log, resume)
    try:
        saved = load_checkpoint(path, mmap=True).get("args", {}) if path is not None else {}
    except CheckpointError:
        return {}
    return {key: saved[key] for key in FROM_CHECKPOINT if key in saved}


def _run_dir_problem(path: Path) -> Optional[str]:
    """Why the run directory ``path`` cannot be made or written, or None; creates nothing to find out."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        return f"`log` {path} {where}, not a folder: give a folder for the run (it is created if absent)"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tllib-tune-write-test-", dir=existing))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"`log` {path} cannot be written ({reason} in {existing}): give a folder you can write to"
    return None


def _under(filename: Any, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(filename)).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


@dataclass
class RunState:
    """Where the run stands: the next step to run (``start_epoch`` = epochs done), the best held-out
    accuracy so far and its epoch (numbered from 1), and the metrics of the steps of an epoch
    interrupted before the resume."""

    start_epoch: int = 0
    start_iter: int = 0
    best_val_acc1: Optional[float] = None
    best_epoch: Optional[int] = None
    partial: Optional[TrainResult] = None


class _EpochSoFar:
    """The running figures of the epoch in progress (for a `save_every` checkpoint): loss and accuracy
    averaged over its steps, with the part before a resume."""

    def __init__(self, before: Optional[TrainResult]) -> None:
        self.before, self.steps, self.loss, self.acc1, self.lr = before, 0, 0.0, 0.0, float("nan")

    def add(self, values: Dict[str, float]) -> None:
        self.steps += 1
        self.loss += values["loss"]
        self.acc1 += values["acc1"]
        self.lr = values["lr"]

    def result(self, next_iter: int) -> TrainResult:
        n, nan = max(self.steps, 1), float("nan")
        mine = TrainResult(
            self.loss / n, self.acc1 / n, self.lr, nan, nan, nan, nan, nan, self.steps, next_iter
        )
        return mine.merged_with(self.before)


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
        render: how the runner's lines read on the console and in log.txt (the command line writes
            settings as its flags); default: as they are.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        *,
        env: Optional[ProcessEnv] = None,
        hooks: Sequence[Hook] = (),
        say: Callable[[str], None] = print,
        name: str = "",
        render: Callable[[str], str] = str,
    ) -> None:
        self.config = config
        self.env = env or ProcessEnv.from_environ()
        self.console = say if self.env.is_main else _quiet
        self.render = render
        self.text_log = TextLog(enabled=self.env.is_main)
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
        self.stop = StopFlag(name, announce=self.env.is_main)
        self.last_val: Optional[EvalResult] = None
        self.epoch_so_far = _EpochSoFar(None)

    def say(self, line: str) -> None:
        """Show ``line`` on the console and append it to log.txt (main process only)."""
        text = self.render(line)
        self.console(text)
        self.text_log.write(text)

    # ---- the whole run -------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Build, then evaluate (`phase` test/analysis) or resume, fit and finish; returns the final
        figures. Running out of memory, a failing batch and an unwritable run directory become
        :class:`FinetuneError` with the fix; every error also ends log.txt."""
        interval = self.config.progress_interval
        try:
            with progress_settings(interval=interval, sink=self.text_log.write if self.env.is_main else None):
                results = self._phases()
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank is done before any closes its connections (gloo can abort)
            return results
        except FinetuneError as exc:
            self.text_log.write(f"error: {self.render(str(exc))}")
            raise
        finally:
            self.text_log.close()
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    def _phases(self) -> Dict[str, Any]:
        try:
            self.build()
            if self.config.phase in TEST_PHASES:
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
        except OSError as exc:
            if exc.errno in _WRITE_ERRORS and _under(exc.filename, self.log_dir):
                raise FinetuneError(
                    f"cannot write {exc.filename} in the run directory `log` {self.log_dir}: {exc.strerror}; "
                    "give a `log` folder you can write to"
                ) from None
            raise

    def _out_of_memory(self, exc: BaseException) -> FinetuneError:
        config = self.config
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mode = config.mode_schedule or config.mode
        return FinetuneError(
            out_of_memory_advice(mode, config.batch_size, config.input_size, config.amp, detail)
        )

    # ---- build ---------------------------------------------------------------------------------------
    def build(self) -> None:
        """The run directory's check, device, the checkpoint to start from (first: a wrong one fails
        before anything is fetched), data sets, the model and its optimizer; a checkpoint's weights are
        loaded here. Test phases read the test split only, and take the number of classes from the
        checkpoint."""
        config = self.config
        self._check_run_dir()
        self.device = setup_device(config, self.env)
        self.amp_dtype = amp_dtype(config.amp)
        if config.quick_start:
            self.say(self._quick_start_banner())
        seed_everything(config.seed)
        self.checkpoint = self.read_checkpoint()
        if config.phase in TEST_PHASES:
            return self._build_for_test()
        with self._data_warnings():
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
            **self._schedule(),
        )
        self.scaler = None
        if config.amp == "fp16":  # float16 needs loss scaling; bfloat16 has float32's range and does not
            amp = torch.amp if hasattr(torch.amp, "GradScaler") else torch.cuda.amp  # torch < 2.3: cuda.amp
            self.scaler = amp.GradScaler("cuda") if amp is torch.amp else amp.GradScaler()
        self._load_weights()
        self.test_loader = eval_loader(self.data.test, config, self.env, self.device)

    def _schedule(self) -> Dict[str, Any]:
        """The learning-rate schedule's settings, for build_optimizer and lr_factor."""
        config = self.config
        return dict(
            sched=config.sched,
            milestones=config.lr_decay_epochs,
            gamma=config.lr_gamma,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            steps_per_epoch=config.iters_per_epoch,
        )

    def _check_run_dir(self) -> None:
        """Training and analysis write into `log`: it must be a folder that can be written (checked
        without creating it). Test appends to the run's log.txt when it can and needs nothing else."""
        problem = _run_dir_problem(self.log_dir)
        if self.config.phase != "test":
            if problem:
                raise FinetuneError(problem)
            return
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise FinetuneError(problem or f"`log` {self.log_dir} is not a folder")
        if problem is None and self.log_dir.is_dir():
            self.text_log.open(self.log_dir / "log.txt")

    @contextlib.contextmanager
    def _data_warnings(self) -> Iterator[None]:
        """Warnings of the data-set readers, said once (by the main process) and into log.txt."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
        for warning in caught:
            self.say(f"warning: {one_line(warning.message)}")  # type: ignore[arg-type]

    def _load_weights(self) -> None:
        if self.checkpoint is None:
            return
        try:
            load_model_state(
                self.model, self.checkpoint["model"], source=f"checkpoint {self.checkpoint_path!r}"
            )
        except CheckpointError as exc:
            raise FinetuneError(str(exc)) from None

    def _build_for_test(self) -> None:
        """The test split, and the checkpoint's model with its number of classes."""
        config = self.config
        with self._data_warnings():
            test = build_test_split(config, self.env)
        saved = self.checkpoint["model"]
        head = [v for k, v in saved.items() if k.endswith("head.weight")]
        num_classes = int(self.checkpoint.get("num_classes") or (head[0].shape[0] if head else 0))
        classes = dataset_classes(test)
        if classes is not None and num_classes and len(classes) != num_classes:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} classifies {num_classes} classes, but data set "
                f"{config.dataset!r} at {config.root!r} has {len(classes)}: give the `dataset` and `root` "
                "it was trained on"
            )
        self.data = DataSplits(train=test, val=None, test=test, num_classes=num_classes or len(classes or ()))
        model, _ = build_model(config, self.data.num_classes, self.env, load_weights=False)
        self.model = self._prepare_model(model)
        self._load_weights()
        self.test_loader = eval_loader(test, config, self.env, self.device)

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
        """In-Place ABN conversion, device and memory format, the batch-statistics check, SyncBatchNorm,
        gradient checkpointing."""
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
        if config.sync_bn and config.phase == "train":
            if env.distributed and "train" in modes_used:
                model = convert_sync_batchnorm(model)  # swaps BN children: ConvBN blocks stay
            elif env.distributed:
                self.say(f"note: `sync_bn` has no effect in {'/'.join(modes_used)} mode (running statistics)")
            else:
                self.say("note: `sync_bn` has no effect in a single process")
        if config.grad_checkpointing and config.phase == "train":
            try:
                enable_grad_checkpointing(unwrap_model(model).backbone)
            except ValueError as exc:
                raise FinetuneError(f"`grad_checkpointing`: {exc}") from None
        return model

    def read_checkpoint(self) -> Optional[Dict[str, Any]]:
        """The checkpoint the run starts from (`resume`, or for a test phase the run's best.pt, else
        latest.pt), checked against `arch`; None for a fresh training run, which must not write over an
        existing one."""
        config, ckpt_dir = self.config, self.log_dir / "checkpoints"
        if config.phase in TEST_PHASES and self.checkpoint_path is None:
            found = find_test_checkpoint(str(self.log_dir), None)
            if found is None:
                raise FinetuneError(
                    f"`phase` {config.phase} needs a checkpoint: give `resume` FILE, or `log` of a run with "
                    f"checkpoints ({ckpt_dir} has no best.pt or latest.pt)"
                )
            self.checkpoint_path = str(found)
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
        """Evaluate the checkpoint on the test split, in the mode of the schedule's last epoch; `phase`
        analysis also writes per-class accuracy and a confusion summary to <log>/analysis/."""
        config = self.config
        apply_mode(self.model, mode_for_epoch(config.schedule, config.epochs - 1))
        analysis = config.phase == "analysis"
        stats = self._validate(
            self.test_loader, "test", num_classes=self.data.num_classes if analysis else None
        )
        result = EvalResult.from_stats(stats)
        self.say(
            f"test: acc1 {result.acc1:.2f}  loss {result.loss:.4f}  ({result.count} images, "
            f"checkpoint {self.checkpoint_path})"
        )
        final = {"test_acc1": result.acc1, "test_loss": result.loss, "count": result.count}
        if analysis:
            self.text_log.open(self.log_dir / "log.txt")
            classes = dataset_classes(self.data.test) or [str(c) for c in range(self.data.num_classes)]
            summary = write_analysis(
                self.log_dir / "analysis", stats["confusion"], classes, checkpoint=self.checkpoint_path,
                enabled=self.env.is_main,
            )  # fmt: skip
            for line in summary["lines"]:
                self.say(line)
            final.update({k: v for k, v in summary.items() if k != "lines"})
        return final

    def _validate(
        self, loader: DataLoader, desc: str, stoppable: bool = False, **kwargs: Any
    ) -> Dict[str, Any]:
        return validate(
            unwrap_model(self.model),
            loader,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
            progress=self.env.is_main,
            desc=desc,
            should_stop=self.stop if stoppable else None,
            **kwargs,
        )

    def evaluate(self, loader: DataLoader, desc: str, stoppable: bool = False) -> EvalResult:
        """One pass of the plain model over ``loader`` (stopped early by a signal when ``stoppable``)."""
        return EvalResult.from_stats(self._validate(loader, desc, stoppable))

    # ---- resume --------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore optimizer, scheduler, scaler, RNG and progress from the checkpoint, if any."""
        checkpoint, config = self.checkpoint, self.config
        if checkpoint is None:
            return
        epoch, iteration = int(checkpoint["epoch"]), int(checkpoint["iteration"])
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self._restore_scheduler(checkpoint["scheduler"], epoch * config.iters_per_epoch + iteration)
            if self.scaler is not None and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} has an optimizer state that does not fit: {exc}"
            ) from None
        partial = checkpoint.get("partial")
        self.state = RunState(
            start_epoch=epoch,
            start_iter=iteration,
            best_val_acc1=checkpoint.get("best_val_acc1"),
            best_epoch=checkpoint.get("best_epoch"),
            partial=TrainResult.from_stats(partial) if partial else None,
        )
        set_rng_state(checkpoint["rng"])
        self.say(f"resuming from {self.checkpoint_path}: {self._position(epoch, iteration)}")
        saved = checkpoint.get("args", {})
        differ = [
            f"`{k}` {saved[k]} -> {v}"
            for k, v in config.to_dict().items()
            if k in saved and k not in _RESUME_MAY_CHANGE and saved[k] != v
        ]
        if differ:
            self.say("note: these settings differ from the saved run: " + "; ".join(differ))
        if epoch >= config.epochs:
            raise FinetuneError(
                f"checkpoint {self.checkpoint_path!r} has already finished {epoch} epochs "
                f"(`epochs` {config.epochs}); raise `epochs` to train longer"
            )

    def _position(self, epoch: int, iteration: int) -> str:
        """Where a checkpoint stands, in epochs numbered from 1: "epoch 2/5 from step 4/8"."""
        config = self.config
        if iteration == 0:
            return f"{epoch} epoch(s) done, next epoch {epoch + 1}/{config.epochs}"
        return f"epoch {epoch + 1}/{config.epochs} from step {iteration + 1}/{config.iters_per_epoch}"

    def _restore_scheduler(self, state: Dict[str, Any], steps_done: int) -> None:
        """The schedule's state; a version-1 checkpoint's MultiStepLR (stepped per epoch) becomes the
        per-step schedule at ``steps_done``."""
        if "milestones" not in state:
            self.scheduler.load_state_dict(state)
            return
        scheduler = self.scheduler
        scheduler.base_lrs = list(state["base_lrs"])
        scheduler.last_epoch = steps_done
        factor = lr_factor(steps_done, **self._schedule())
        for group, base in zip(self.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * factor
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # ---- fit -----------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the state's epoch to `epochs`, evaluating after every epoch; a signal saves
        latest.pt and raises :class:`Stopped`, a non-finite loss raises :class:`Diverged`."""
        self._prepare_training()
        self.text_log.open(self.log_dir / "log.txt")
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
        """DistributedDataParallel, torch.compile, and the loaders of the training stream and of the
        per-epoch evaluation."""
        config, env = self.config, self.env
        if env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters="deploy" in config.modes_used,  # deploy leaves gamma out of the graph
            )
        if config.compile:
            self.model = self._compiled(self.model)
        self.sampler = EpochBatchSampler(
            len(self.data.train),
            config.batch_size * config.grad_accum_steps,  # one step's batch; the engine splits it
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
            worker_init_fn=leave_stop_signals_to_main,
        )
        has_val = self.data.val is not None
        self.val_loader = (
            eval_loader(self.data.val, config, env, self.device) if has_val else self.test_loader
        )

    def _compiled(self, model: nn.Module) -> nn.Module:
        """torch.compile of the training model (evaluation runs the plain module eagerly)."""
        import torch._dynamo  # noqa: F401  (list_backends)

        backend = self.config.compile_backend
        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            from ..common import suggest

            raise FinetuneError(
                f"`compile_backend` {backend!r} is not a torch.compile backend; {suggest(backend, known)}"
            )
        return torch.compile(model, backend=backend)

    def _describe(self) -> None:
        config, data = self.config, self.data
        n_params = sum(p.numel() for p in unwrap_model(self.model).parameters())
        n_val = len(data.val) if data.val is not None else 0
        self.say(f"run directory: {self.log_dir}")
        self.say(
            f"{config.dataset}: {len(data.train)} train / {n_val} val / {len(data.test)} test images, "
            f"{data.num_classes} classes (chance {100 / data.num_classes:.1f}%)"
        )
        accum = f" x {config.grad_accum_steps} micro-batches" if config.grad_accum_steps > 1 else ""
        self.say(
            f"{config.arch} ({n_params / 1e6:.1f} M parameters), {self.weights}; backbone lr "
            f"{'0.1x' if unwrap_model(self.model).finetune else '1x'}; {self.env.world_size} process(es) on "
            f"{self.device}, batch {config.batch_size}{accum}/process, amp {config.amp}"
        )
        if config.val_ratio == 0:
            self.say(
                "no `val_ratio`: no model selection; val/* in TensorBoard is the test split, the final epoch "
                "counts"
            )
        elif data.val is None:
            self.say(
                f"{config.dataset} has no test split: the `val_ratio` part held out of train is the test "
                "split (val/* in TensorBoard); no model selection"
            )

    def run_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch (from the resume step in the first), evaluate; ``epoch`` is 0-based."""
        self._call("before_epoch", epoch)
        first = epoch == self.state.start_epoch
        partial, begin = (self.state.partial, self.state.start_iter) if first else (None, 0)
        self.state.partial = None
        self.epoch_so_far = _EpochSoFar(partial)
        if self.stop():
            self._save_and_stop(epoch, begin, partial)
        train = self._train(epoch, begin).merged_with(partial)
        if train.stopped:
            self._save_and_stop(epoch, train.next_iter, train)
        label = f"epoch {epoch + 1}/{self.config.epochs} {self.data.val_name}"
        val = self.evaluate(self.val_loader, label, stoppable=True)
        if val.stopped:
            self._save_and_stop(epoch, self.config.iters_per_epoch, train)
        self.last_val = val
        result = EpochResult(epoch, self.current_mode or "", train, val, self.data.val_name)
        self._call("after_epoch", result)
        return result

    def _train(self, epoch: int, begin: int) -> TrainResult:
        config = self.config
        self.sampler.set_epoch(epoch, begin)
        smoothing = config.label_smoothing
        stats = train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            epoch=epoch,
            iters_per_epoch=config.iters_per_epoch,
            start_iter=begin,
            device=self.device,
            criterion=functools.partial(F.cross_entropy, label_smoothing=smoothing) if smoothing else None,
            scaler=self.scaler,
            scheduler=self.scheduler,
            amp_dtype=self.amp_dtype,
            channels_last=config.channels_last,
            accum_steps=config.grad_accum_steps,
            on_step=lambda step, values: self._after_step(epoch, step, values),
            should_stop=self.stop,
            progress=self.env.is_main,
            desc=f"epoch {epoch + 1}/{config.epochs} train",
        )
        return TrainResult.from_stats(stats)

    def _after_step(self, epoch: int, step: int, values: Dict[str, float]) -> None:
        self.epoch_so_far.add(values)
        self._call("after_step", epoch, step, values)

    def _save_and_stop(self, epoch: int, iteration: int, partial: Optional[TrainResult]) -> None:
        """The one way a signal ends a run: save latest.pt at (epoch, iteration), raise Stopped."""
        self.checkpoints.save_latest(epoch, iteration, partial)
        raise Stopped(self.stop.signum or signal.SIGINT)

    def _diverged(self, exc: NonFiniteLossError) -> Diverged:
        latest = self.log_dir / "checkpoints" / "latest.pt"
        kept = f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was written yet"
        config = self.config
        step = exc.epoch * config.iters_per_epoch + exc.iteration + 1
        where = {"epoch": exc.epoch + 1, "step": exc.iteration + 1, "global_step": step, "loss": exc.value}
        self._call("after_train", "diverged", diverged_at=where)
        advice = divergence_advice(self.current_mode or config.mode, config.amp, config.pretrained)
        return Diverged(
            f"the loss became {exc.value} at epoch {exc.epoch + 1}/{config.epochs}, step "
            f"{exc.iteration + 1}/{config.iters_per_epoch} (global step {step}) in {self.current_mode} mode; "
            f"stopped without saving, {kept}. {advice}"
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
