"""Stopping a training loop cleanly on Ctrl-C or SIGTERM: a flag the loop reads after each step.

The first SIGINT/SIGTERM only sets the flag, so the loop can finish the step and save a checkpoint; a
second Ctrl-C raises KeyboardInterrupt at once. The previous handlers are restored on exit.

Ctrl-C, ``timeout`` and Slurm's scancel signal the whole process group, DataLoader workers included: a
worker killed under the loop would end the run with a traceback instead of a saved checkpoint, so loaders
start their workers with :func:`leave_stop_signals_to_main` (``worker_init_fn``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Dict, Optional

__all__ = ["StopFlag", "leave_stop_signals_to_main"]


class StopFlag:
    """Context manager whose call says whether SIGINT/SIGTERM arrived; ``signum`` says which.

    Args:
        name: printed before the notice on stderr (e.g. the program's name).
        saving: what the loop saves before it stops, named in the notice.
        announce: print the notice (False on all but one of several processes, so it prints once).
    """

    def __init__(self, name: str = "", saving: str = "latest.pt", announce: bool = True) -> None:
        self.name = name
        self.saving = saving
        self.announce = announce
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if not self.announce:
            return
        prefix = f"{self.name}: " if self.name else ""
        print(
            f"\n{prefix}{signal.Signals(signum).name} received: finishing this step and saving {self.saving} "
            "(Ctrl-C again to quit without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self) -> bool:
        return self.signum is not None


def leave_stop_signals_to_main(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker leaves Ctrl-C and a SIGTERM sent to the whole process group
    to the main process's :class:`StopFlag` (which stops the loop and saves), but still ends when the main
    process itself terminates it (as the DataLoader and Python's exit do; ignoring that would hang the exit).

    Where the platform cannot tell who sent a SIGTERM (no ``sigwaitinfo``, e.g. macOS), only SIGINT is
    left to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # delivered only to the waiting thread
    parent = os.getppid()
    threading.Thread(target=_end_on_parents_sigterm, args=(parent,), daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:  # the main process ends us (or is gone)
            os._exit(0)
