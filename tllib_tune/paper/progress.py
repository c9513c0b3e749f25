"""Progress of a long run, visible wherever it runs: a log file, phase lines, and per-step progress.

On a terminal each phase shows a tqdm bar; elsewhere (a pipe, CI, a test) it prints a plain line at most
every ``interval`` seconds instead, so that a log never fills with carriage returns and a silent minute
never looks like a hang. Every line also goes, time-stamped, to the log file.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from tqdm.auto import tqdm

__all__ = ["Progress"]

StepFn = Callable[..., None]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Progress:
    """``say(line)`` for events; ``with progress.phase(name, total) as step: step(note=...)`` for steps.

    Args:
        log_path: file the lines are appended to (None: no log file).
        stream: where lines are printed (default sys.stdout).
        tty: show tqdm bars; default: whether ``stream`` is a terminal.
        interval: seconds between plain progress lines when there are no bars.
    """

    def __init__(
        self,
        log_path: Optional[Path] = None,
        stream: Optional[IO[str]] = None,
        tty: Optional[bool] = None,
        interval: float = 30.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.interval = interval
        self._log = open(log_path, "a", encoding="utf-8") if log_path is not None else None
        self._bar: Optional[tqdm] = None
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since this object was made."""
        return time.perf_counter() - self._start

    def say(self, message: str) -> None:
        """Print one time-stamped line (above the bar, if one is shown) and append it to the log."""
        line = f"[{_clock(self.elapsed())}] {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[StepFn]:
        """A phase of ``total`` steps; yields ``step(n=1, note="")`` to call after each step."""
        self.say(f"{name}: {total} steps")
        start = time.perf_counter()
        state = {"done": 0, "last": start}
        bar = tqdm(total=total, desc=name, leave=False, dynamic_ncols=True) if self.tty else None
        self._bar = bar

        def step(n: int = 1, note: str = "") -> None:
            state["done"] += n
            now = time.perf_counter()
            if bar is not None:
                bar.set_postfix_str(note, refresh=False)
                bar.update(n)
            elif now - state["last"] >= self.interval:
                state["last"] = now
                self.say(f"{name}: step {state['done']}/{total}{', ' + note if note else ''}")

        try:
            yield step
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
        self.say(f"{name}: done in {time.perf_counter() - start:.1f} s")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
