"""StopFlag: a signal sets the flag and, on the one process that announces, prints one notice; the
previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tllib_tune.utils.signals import StopFlag


@pytest.mark.parametrize("announce", [True, False])
def test_sigterm_sets_the_flag_and_only_the_announcing_process_says_so(announce, capsys):
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag("finetune.py", announce=announce) as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM
    err = capsys.readouterr().err
    notice = "finetune.py: SIGTERM received: finishing this step and saving latest.pt"
    assert err.count(notice) == (1 if announce else 0) and (announce or err == "")
    assert signal.getsignal(signal.SIGTERM) is before


def test_loader_workers_leave_a_group_sigterm_to_the_main_process():
    """timeout and Slurm signal the whole process group: the workers must live on, so that the main
    process can finish its step and save."""
    import torch
    from torch.utils.data import DataLoader

    from tllib_tune.utils.signals import leave_stop_signals_to_main

    data = torch.arange(8.0)
    loader = DataLoader(data, batch_size=2, num_workers=1, worker_init_fn=leave_stop_signals_to_main)
    batches = iter(loader)
    first = next(batches)
    workers = batches._workers  # noqa: SLF001  (the worker processes, to signal them)
    for worker in workers:  # sent by another process, as timeout's or scancel's are
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    rest = list(batches)
    assert torch.equal(torch.cat([first, *rest]), data) and not any(w.is_alive() for w in workers)


def test_a_process_with_persistent_workers_still_exits():
    """Python's exit terminates the workers a persistent loader keeps: they must end, or the exit hangs."""
    code = (
        "import torch; from torch.utils.data import DataLoader\n"
        "from tllib_tune.utils.signals import leave_stop_signals_to_main\n"
        "loader = DataLoader(torch.arange(8.0), batch_size=2, num_workers=2, persistent_workers=True,\n"
        "                    worker_init_fn=leave_stop_signals_to_main)\n"
        "print(sum(len(b) for b in loader))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "8", done.stderr
