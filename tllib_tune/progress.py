"""Progress of long loops, one rule for the whole package: a tqdm bar on a terminal, otherwise a plain line
every ``interval`` seconds (a pipe, nohup, a Slurm log get a readable line, not carriage-return updates).

    with progress_bar(total=500, desc="epoch 2/5 train", unit="step") as bar:
        for ...:
            bar.set_postfix(loss="1.2345")
            bar.update(1)
    # no terminal: "epoch 2/5 train: step 120/500 (24%), 0.532 s/step, ETA 3m22s, loss 1.2345"

:func:`progress_bar` takes tqdm's usual arguments (``iterable``, ``total``, ``desc``, ``disable``,
``leave``, ``unit``, ``unit_scale``, ``unit_divisor``, ``initial``), so ``from tllib_tune.progress import
progress_bar as tqdm`` switches a module over. The interval is ``interval``, else the innermost
:func:`progress_settings`, else the environment's ``TLLIB_TUNE_PROGRESS_INTERVAL``, else 30 s.
:func:`progress_settings` can also add a *sink*, a function that receives every plain line whether or not
there is a terminal (the fine-tuning runner writes them to its run's log.txt). Depends only on the
standard library and tqdm, so every layer (datasets included) may use it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional

__all__ = ["DEFAULT_INTERVAL", "ENV_INTERVAL", "Progress", "progress_bar", "progress_settings", "format_time"]

DEFAULT_INTERVAL = 30.0
ENV_INTERVAL = "TLLIB_TUNE_PROGRESS_INTERVAL"
Sink = Callable[[str], None]

_SETTINGS: List[Dict[str, Any]] = []


@contextlib.contextmanager
def progress_settings(*, interval: Optional[float] = None, sink: Optional[Sink] = None) -> Iterator[None]:
    """Within the block, bars made without an ``interval`` use this one, and ``sink`` (if given) gets
    every plain line too. Blocks nest; the innermost interval wins and every sink is called."""
    _SETTINGS.append({"interval": interval, "sink": sink})
    try:
        yield
    finally:
        _SETTINGS.pop()


def default_interval() -> float:
    """Seconds between plain lines: the innermost :func:`progress_settings`, else the environment, else 30."""
    for settings in reversed(_SETTINGS):
        if settings["interval"] is not None:
            return float(settings["interval"])
    try:
        value = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def format_time(seconds: float) -> str:
    """``75`` -> "1m15s", ``3725`` -> "1h02m05s", ``4.2`` -> "4s"."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _scaled(value: float, divisor: int) -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < divisor or prefix == "T":
            return f"{value:.0f}{prefix}" if not prefix else f"{value:.1f}{prefix}"
        value /= divisor
    return f"{value:.1f}"


def _is_terminal(stream: IO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class Progress:
    """A loop's progress: tqdm on a terminal, plain lines otherwise (and to every sink); see the module."""

    def __init__(
        self,
        iterable: Optional[Iterable] = None,
        total: Optional[float] = None,
        desc: str = "",
        disable: Optional[bool] = False,
        leave: bool = True,
        unit: str = "it",
        unit_scale: bool = False,
        unit_divisor: int = 1000,
        initial: float = 0,
        interval: Optional[float] = None,
        file: Optional[IO] = None,
        **tqdm_kwargs: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit.strip() or "it"
        self.unit_scale, self.unit_divisor = unit_scale, unit_divisor
        self.n = self.start_n = self.shown_n = initial
        self.interval = default_interval() if interval is None else float(interval)
        self.file = file if file is not None else sys.stderr
        self.sinks = [s["sink"] for s in _SETTINGS if s["sink"] is not None] if not disable else []
        self.postfix: Dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.lines = 0
        self.closed = False
        shown = not disable  # tqdm's disable=None: only on a terminal; ours decides that below
        self.bar = None
        self.console = shown and not _is_terminal(self.file)
        if shown and not self.console:
            from tqdm.auto import tqdm

            kwargs = dict(desc=desc, leave=leave, unit=unit, unit_scale=unit_scale, initial=initial)
            self.bar = tqdm(total=total, unit_divisor=unit_divisor, file=self.file, **kwargs, **tqdm_kwargs)

    # ---- tqdm's interface ----------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        if (self.console or self.sinks) and time.monotonic() - self.last_line >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True, **kwargs: Any):
        self.postfix = {**(ordered_dict or {}), **kwargs}
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=refresh)

    def close(self) -> None:
        """Close the bar; a plain-line loop that printed before ends with a line at its final count."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if self.lines and self.n != self.shown_n:
            self._emit()

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:  # type: ignore[union-attr]
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- plain lines ---------------------------------------------------------------------------------
    def line(self) -> str:
        """The plain line for the current count, e.g. "desc: step 120/500 (24%), 0.532 s/step, ETA 3m22s"."""
        now = time.monotonic()
        count = self._count(self.n)
        if self.total:
            count += f"/{self._count(self.total)} ({100 * self.n / self.total:.0f}%)"
        parts = [count if self.unit_scale else f"{self.unit} {count}"]
        done, elapsed = self.n - self.start_n, now - self.started
        if done > 0 and elapsed > 0:
            if self.unit_scale:
                parts.append(f"{_scaled(done / elapsed, self.unit_divisor)}{self.unit}/s")
            else:
                parts.append(f"{elapsed / done:.3f} s/{self.unit}")
            if self.total:
                parts.append(f"ETA {format_time((self.total - self.n) * elapsed / done)}")
        parts.append(f"elapsed {format_time(elapsed)}")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return f"{self.desc}: " * bool(self.desc) + ", ".join(parts)

    def _count(self, value: float) -> str:
        if self.unit_scale:
            return _scaled(value, self.unit_divisor) + self.unit
        return f"{int(value)}" if float(value).is_integer() else f"{value:.1f}"

    def _emit(self) -> None:
        text = self.line()
        self.last_line, self.shown_n = time.monotonic(), self.n
        self.lines += 1
        if self.console:
            print(text, file=self.file, flush=True)
        for sink in self.sinks:
            sink(text)


def progress_bar(iterable: Optional[Iterable] = None, **kwargs: Any) -> Progress:
    """A :class:`Progress` (tqdm's arguments; ``interval`` seconds between plain lines)."""
    return Progress(iterable, **kwargs)
