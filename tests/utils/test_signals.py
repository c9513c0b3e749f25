"""StopFlag: a signal sets the flag and, on the one process that announces, prints one notice; the
previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal

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
