"""tllib_tune.progress: a tqdm bar on a terminal, a plain line every `interval` seconds otherwise (on a
fake clock), sinks that get every line, and the interval's sources (argument, settings, environment)."""

from __future__ import annotations

import io

import pytest

from tllib_tune import progress
from tllib_tune.progress import default_interval, format_time, progress_bar, progress_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_a_line_every_interval(clock):
    out = io.StringIO()
    with progress_bar(total=10, desc="epoch 2/5 train", unit="step", interval=30, file=out) as bar:
        for _ in range(10):
            clock.now += 7  # a step every 7 s: lines after steps 5 (35 s) and 10 (70 s, 35 s later)
            bar.set_postfix(loss="1.2345")
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 2/5 train: step 5/10 (50%), 7.000 s/step, ETA 35s, elapsed 35s, loss 1.2345",
        "epoch 2/5 train: step 10/10 (100%), 7.000 s/step, ETA 0s, elapsed 1m10s, loss 1.2345",
    ]  # closing adds no line: the last one already shows the final count
    assert "\r" not in out.getvalue()


def test_closing_shows_the_final_count_once_lines_were_printed(clock):
    out = io.StringIO()
    with progress_bar(total=4, unit="step", interval=10, file=out) as bar:
        for seconds in (11, 1, 1, 1):
            clock.now += seconds
            bar.update(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "step 1/4 (25%)",
        "step 4/4 (100%)",
    ]


def test_a_loop_shorter_than_the_interval_prints_nothing(clock):
    out = io.StringIO()
    for _ in progress_bar(range(3), desc="quick", interval=30, file=out):
        clock.now += 1
    assert out.getvalue() == ""


def test_a_resumed_loop_counts_its_rate_from_where_it_started(clock):
    out = io.StringIO()
    bar = progress_bar(total=8, initial=5, unit="step", interval=0, file=out)
    clock.now += 2
    bar.update(1)
    bar.close()
    assert out.getvalue() == "step 6/8 (75%), 2.000 s/step, ETA 4s, elapsed 2s\n"


def test_on_a_terminal_it_is_tqdm_and_sinks_still_get_plain_lines(clock):
    out, seen = Terminal(), []
    with progress_settings(interval=0, sink=seen.append):
        with progress_bar(total=2, desc="val", unit="batch", file=out) as bar:
            clock.now += 1
            bar.update(1)
            clock.now += 1
            bar.update(1)
    assert "\r" in out.getvalue() and "2/2" in out.getvalue()  # tqdm's bar
    assert seen == ["val: batch 1/2 (50%), 1.000 s/batch, ETA 1s, elapsed 1s",
                    "val: batch 2/2 (100%), 1.000 s/batch, ETA 0s, elapsed 2s"]  # fmt: skip


def test_disabled_bars_print_nothing_anywhere(clock):
    out, seen = io.StringIO(), []
    with progress_settings(interval=0, sink=seen.append):
        with progress_bar(total=2, disable=True, file=out) as bar:
            bar.update(2)
    assert out.getvalue() == "" and seen == []


def test_byte_counts_are_scaled(clock):
    out = io.StringIO()
    bar = progress_bar(total=4_000_000, unit="B", unit_scale=True, unit_divisor=1024, interval=0, file=out)
    clock.now += 2
    bar.update(2_097_152)
    assert out.getvalue().startswith("2.0MB/3.8MB (52%), 1.0MB/s, ETA 2s")


def test_the_interval_comes_from_the_settings_then_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV_INTERVAL, raising=False)
    assert default_interval() == progress.DEFAULT_INTERVAL == 30
    monkeypatch.setenv(progress.ENV_INTERVAL, "5")
    assert default_interval() == 5
    with progress_settings(interval=2):
        with progress_settings(sink=print):  # no interval: the outer block's
            assert default_interval() == 2 and progress_bar(total=1, disable=True).interval == 2
    monkeypatch.setenv(progress.ENV_INTERVAL, "soon")
    assert default_interval() == 30  # not a number: the default


@pytest.mark.parametrize("seconds, text", [(4.2, "4s"), (75, "1m15s"), (3725, "1h02m05s"), (-3, "0s")])
def test_format_time(seconds, text):
    assert format_time(seconds) == text
