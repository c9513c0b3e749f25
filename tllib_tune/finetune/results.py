"""What an epoch of fine-tuning measured, as dataclasses, and the run-level figures made from them.

:class:`TrainResult` and :class:`EvalResult` hold what :func:`tllib_tune.engine.train_one_epoch` and
:func:`~tllib_tune.engine.validate` return (with real ints and bools for their step counts and flags);
:class:`EpochResult` is one epoch's line in metrics.jsonl, TensorBoard and the console.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["TrainResult", "EvalResult", "EpochResult", "summarize"]

#: The per-iteration measurements of an epoch (in metrics.jsonl's order) and their TensorBoard tags.
PERF_TAGS = {
    "iter_time_s": "perf/iter_time_s",
    "data_time_s": "perf/data_time_s",
    "images_per_s": "perf/images_per_s",
    "activations_mb": "memory/activations_mb",
    "peak_gb": "memory/peak_gb",
}


@dataclass
class TrainResult:
    """One (possibly partial) epoch of training: averages over its images and its time per step."""

    loss: float
    acc1: float
    lr: float
    iter_time_s: float
    data_time_s: float
    images_per_s: float
    activations_mb: float
    peak_gb: float
    iterations: int = 0
    """Steps run (in this process's part of the epoch and any part before a resume)."""
    next_iter: int = 0
    """The step to carry on from: the epoch's length unless the run was stopped."""
    stopped: bool = False

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> TrainResult:
        """From train_one_epoch's dict, or a checkpoint's ``partial`` entry (floats or not)."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {k: stats[k] for k in names if k in stats}
        values["iterations"] = int(values.get("iterations", 0))
        values["next_iter"] = int(values.get("next_iter", 0))
        values["stopped"] = bool(values.get("stopped", False))
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values, for a checkpoint (restored by :meth:`from_stats`)."""
        return dataclasses.asdict(self)

    def merged_with(self, before: Optional[TrainResult]) -> TrainResult:
        """This part of an epoch combined with the part ``before`` an interruption: loss and accuracy
        averaged over both parts' steps, times and memory this part's (``before``'s if this one ran
        no step)."""
        if before is None or not before.iterations:
            return self
        if not self.iterations:
            return dataclasses.replace(before, next_iter=self.next_iter, stopped=self.stopped, lr=self.lr)
        n1, n2 = before.iterations, self.iterations
        return dataclasses.replace(
            self,
            loss=(before.loss * n1 + self.loss * n2) / (n1 + n2),
            acc1=(before.acc1 * n1 + self.acc1 * n2) / (n1 + n2),
            iterations=n1 + n2,
        )


@dataclass
class EvalResult:
    """An evaluation pass: loss and top-1/top-5 accuracy over ``count`` images (all processes)."""

    loss: float
    acc1: float
    acc5: float
    count: int
    stopped: bool = False

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> EvalResult:
        """From validate's dict."""
        return cls(
            loss=stats["loss"],
            acc1=stats["acc1"],
            acc5=stats["acc5"],
            count=int(stats["count"]),
            stopped=bool(stats.get("stopped", False)),
        )


@dataclass
class EpochResult:
    """A finished epoch: its 0-based index ``epoch`` (shown everywhere as :attr:`number`, from 1), its
    mode, training and the evaluation on ``val_name`` ("val" with a held-out split, else "test")."""

    epoch: int
    mode: str
    train: TrainResult
    val: EvalResult
    val_name: str

    @property
    def number(self) -> int:
        """The epoch as every display and file shows it: 1 for the first."""
        return self.epoch + 1

    def record(self) -> Dict[str, Any]:
        """The epoch's line in metrics.jsonl (``epoch`` is :attr:`number`, from 1)."""
        train = self.train
        return {
            "epoch": self.number,
            "mode": self.mode,
            "lr": train.lr,
            "train_loss": train.loss,
            "train_acc1": train.acc1,
            f"{self.val_name}_loss": self.val.loss,
            f"{self.val_name}_acc1": self.val.acc1,
            **{k: getattr(train, k) for k in PERF_TAGS},
            "iterations": float(train.iterations),  # a float, as in the files of earlier runs
        }

    def scalars(self) -> Dict[str, float]:
        """The TensorBoard scalars logged at the epoch's last step."""
        scalars = {tag: getattr(self.train, key) for key, tag in PERF_TAGS.items()}
        return {**scalars, "val/loss": self.val.loss, "val/acc1": self.val.acc1}

    def line(self, epochs: int) -> str:
        """The console line, "epoch 2/5 [tune] lr ... train loss ... test acc1 ..."."""
        t, v = self.train, self.val
        return (
            f"epoch {self.number}/{epochs} [{self.mode}] lr {t.lr:.2g}  train loss {t.loss:.4f} "
            f"acc1 {t.acc1:.1f}  {self.val_name} loss {v.loss:.4f} acc1 {v.acc1:.2f}  "
            f"{t.iter_time_s:.3f} s/it  activations {t.activations_mb:.1f} MiB  peak {t.peak_gb:.2f} GiB"
        )


def _weighted(key: str, rows: List[Mapping[str, Any]]) -> Optional[float]:
    pairs = [(r[key], r.get("iterations") or 1) for r in rows if r.get(key) is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _peak(key: str, rows: List[Mapping[str, Any]]) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None


def _figures(rows: List[Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    return {k: (_peak if k in ("activations_mb", "peak_gb") else _weighted)(k, rows) for k in PERF_TAGS}


def summarize(records: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Run-level figures from metrics.jsonl records: times weighted by iterations, memory the peak,
    overall and ``by_mode``."""
    by_mode: Dict[str, List[Mapping[str, Any]]] = {}
    for r in records:
        by_mode.setdefault(r["mode"], []).append(r)
    return {**_figures(records), "by_mode": {mode: _figures(rows) for mode, rows in by_mode.items()}}
