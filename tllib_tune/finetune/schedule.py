"""Modes by epoch: "train:0-12,tune:12-20" (the paper's Appendix I) parsed, checked and looked up.

A segment's START-END count epochs done, the end exclusive: "train:0-12,tune:12-20" trains epochs 1-12
in train mode and epochs 13-20 in tune mode (epochs are numbered from 1 wherever they are shown). In
code, epochs are 0-based indices: :func:`mode_for_epoch` (schedule, 12) is the 13th epoch's mode.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

__all__ = ["MODES", "SCHEDULE_MODES", "Segment", "parse_mode_schedule", "mode_for_epoch"]

#: What the backbone's blocks may do: the four ConvBN modes, or the In-Place ABN baseline.
MODES = ("train", "eval", "tune", "deploy", "inplace-abn")
#: The modes a schedule may switch among (In-Place ABN replaces the blocks, so it cannot be left).
SCHEDULE_MODES = ("train", "eval", "tune", "deploy")
#: (mode, first epoch, end epoch), the end exclusive.
Segment = Tuple[str, int, int]

_EXAMPLE = 'e.g. `mode_schedule` "train:0-12,tune:12-20"'


def _segment(part: str) -> Segment:
    mode, sep, span = part.partition(":")
    start, dash, end = span.partition("-")
    mode = mode.strip().lower()
    if not sep or not dash or not start.strip().isdigit() or not end.strip().isdigit():
        raise ValueError(f"segment {part!r} is not MODE:START-END ({_EXAMPLE})")
    if mode not in SCHEDULE_MODES:
        extra = (
            " (inplace-abn replaces the blocks, so it can only be `mode`)" if mode == "inplace-abn" else ""
        )
        raise ValueError(
            f"segment {part!r}: unknown mode {mode!r}; choose from {', '.join(SCHEDULE_MODES)}{extra}"
        )
    first, last = int(start), int(end)
    if last <= first:
        raise ValueError(f"segment {part!r}: END must be larger than START ({_EXAMPLE})")
    return mode, first, last


def parse_mode_schedule(text: str, epochs: int) -> List[Segment]:
    """Parse "train:0-12,tune:12-20" into [(mode, first_epoch, end_epoch)], sorted, checking that the
    segments run on from epoch 0 without gaps or overlaps and cover ``epochs``; ValueError says why not."""
    segments = sorted((_segment(part.strip()) for part in text.split(",")), key=lambda s: s[1])
    expected = 0
    for mode, first, last in segments:
        if first != expected:
            what = (
                f"overlaps the previous segment, which ends at {expected}"
                if first < expected
                else f"leaves epoch{'s' if first - expected > 1 else ''} {_span(expected + 1, first)} "
                "without a mode"
            )
            raise ValueError(
                f"segment {mode}:{first}-{last} {what}; segments must run on from 0 without gaps ({_EXAMPLE})"
            )
        expected = last
    if expected < epochs:
        raise ValueError(
            f"it ends after epoch {expected} but the run has `epochs` {epochs}; extend the last segment to "
            f"{epochs}"
        )
    return segments


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def mode_for_epoch(schedule: Sequence[Segment], epoch: int) -> str:
    """The mode of the epoch of 0-based index ``epoch`` (epoch ``epoch + 1``); past the end, the last
    segment's."""
    for mode, first, last in schedule:
        if first <= epoch < last:
            return mode
    return schedule[-1][0]
