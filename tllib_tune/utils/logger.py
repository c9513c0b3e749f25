"""Run logging: TensorBoard scalars, one JSON record per epoch, a final summary, and the console's lines.

A run directory looks like::

    <log>/log.txt             the console's lines and the progress lines (TextLog), appended per run
    <log>/tb/                 TensorBoard events (scalars; <log>/tb/hparams holds add_hparams)
    <log>/metrics.jsonl       one JSON object per epoch ("epoch" numbered from 1)
    <log>/summary.json        the run's result (written atomically, updated at the end)
    <log>/checkpoints/        latest.pt, best.pt (see tllib_tune.utils.checkpoint)

Only the main process logs under torch.distributed: build the logger with ``enabled=False`` elsewhere.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..common import atomic_write

__all__ = ["RunLogger", "TextLog", "to_jsonable", "write_json_atomic", "read_jsonl"]


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf become None, tuples lists, tensors and numpy scalars numbers."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json_atomic(path: os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file and ``os.replace``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(data), f, indent=2, sort_keys=True)
        f.write("\n")


def read_jsonl(path: os.PathLike) -> List[Dict[str, Any]]:
    """The records of a JSON-lines file (an absent file has none); a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLogger:
    """TensorBoard + metrics.jsonl + summary.json for one run directory.

    Args:
        log_dir: the run directory.
        enabled: False on non-main processes (every method is then a no-op).
        purge_step: when resuming, the first global step still to come; TensorBoard drops the old
            events from that step on and metrics.jsonl keeps only the records of the first
            ``keep_epochs`` epochs (numbered from 1: those with ``epoch <= keep_epochs``).
        keep_epochs: see ``purge_step``.
    """

    def __init__(
        self,
        log_dir: os.PathLike,
        *,
        enabled: bool = True,
        purge_step: Optional[int] = None,
        keep_epochs: Optional[int] = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is heavy

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.log_dir / "tb"), purge_step=purge_step)
        self.metrics_path = self.log_dir / "metrics.jsonl"
        if keep_epochs is not None:
            kept = [r for r in read_jsonl(self.metrics_path) if r.get("epoch", 0) <= keep_epochs]
            self._rewrite_metrics(kept)

    def _rewrite_metrics(self, records: List[Dict[str, Any]]) -> None:
        with atomic_write(self.metrics_path, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None:
            self.writer.add_scalar(tag, float(value), global_step=step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several ``tag: value`` scalars at one step."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def epoch_record(self, record: Mapping[str, Any]) -> None:
        """Append one line to metrics.jsonl (flushed, so a crash keeps every finished epoch)."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
            f.flush()
        if self.writer is not None:
            self.writer.flush()

    def summary(self, data: Mapping[str, Any]) -> None:
        """Write summary.json atomically."""
        if self.enabled:
            write_json_atomic(self.log_dir / "summary.json", data)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """TensorBoard's HParams entry (in <log>/tb/hparams); metric keys must differ from scalar tags."""
        if self.writer is None:
            return
        clean_h = {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in hparams.items()
            if v is not None
        }
        clean_m = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self.writer.add_hparams(clean_h, clean_m, run_name="hparams")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TextLog:
    """The run's log.txt: every line the console shows, appended and flushed one by one.

    Lines written before :meth:`open` (the run directory may not exist yet) are kept and written first;
    a log never opened writes nothing. ``enabled=False`` (non-main processes) makes every call a no-op.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.pending: List[str] = []
        self.file = None
        self.path: Optional[Path] = None

    def open(self, path: os.PathLike) -> None:
        """Start appending to ``path`` (its folder is created); raises OSError when it cannot be written."""
        if not self.enabled or self.file is not None:
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        for line in self.pending:
            self.file.write(line + "\n")
        self.pending.clear()
        self.file.flush()

    def write(self, text: str) -> None:
        """Append ``text`` (one or more lines)."""
        if not self.enabled:
            return
        lines = text.rstrip("\n").splitlines() or [""]
        if self.file is None:
            self.pending.extend(lines)
            return
        self.file.write("".join(line + "\n" for line in lines))
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
