"""The product's targets for Tune and against its peers, and how a run measures up to each: one ratio per
setting, whether every setting is within the limit, and under each time ratio its interval (:mod:`.stats`),
which says whether the run decides the target at all.
"""

from __future__ import annotations

import statistics
from typing import List, NamedTuple, Optional, Sequence, Tuple

from .report import by_setting_and_mode
from .stats import SPREAD_LEVEL, min_rounds, ratio_interval, round_ratio_interval, round_ratios

__all__ = ["TARGETS", "PEER_TARGETS", "ROUNDS_NOTE", "target_settings", "target_values", "format_targets"]


# The product's headline targets for Tune: (label, ratio column, upper limit).
TARGETS: Tuple[Tuple[str, str, float], ...] = (
    ("memory tune/deploy", "memory_vs_deploy", 1.01),
    ("memory tune/eval", "memory_vs_eval", 0.50),
    ("time tune/eval", "time_vs_eval", 0.95),
    ("time tune/deploy", "time_vs_deploy", 1.03),
)


#: Targets against the peers: (label, mode, reference mode, column compared, upper limit).
PEER_TARGETS: Tuple[Tuple[str, str, str, str, float], ...] = (
    ("memory tune/compiled-pass", "tune", "compiled-pass", "activation_mb", 0.92),
    ("memory c-tune/c-deploy", "compiled-tune", "compiled-deploy", "activation_mb", 1.01),
    ("time c-tune/c-pass", "compiled-tune", "compiled-pass", "median_s", 1.00),
    ("time c-tune/c-deploy", "compiled-tune", "compiled-deploy", "median_s", 1.03),
    ("memory tune+ckpt/tune", "tune+ckpt", "tune", "activation_mb", 1.00),
    ("peak tune+ckpt/eval+ckpt", "tune+ckpt", "eval+ckpt", "peak_saved_mb", 0.60),
    ("peak tune/eval", "tune", "eval", "peak_saved_mb", 0.60),
)


def _peer_ratios(rows: List[dict], settings: List[Tuple[int, int]]) -> List[Tuple[str, float, List[float]]]:
    """(label, limit, ratio per setting) of each :data:`PEER_TARGETS` entry whose modes the run holds."""
    cell = by_setting_and_mode(rows)
    found = []
    for label, mode, ref, column, limit in PEER_TARGETS:
        pairs = [(cell.get((*s, mode)), cell.get((*s, ref))) for s in settings]
        if all(a is not None and b is not None and a[column] and b[column] for a, b in pairs):
            found.append((label, limit, [a[column] / b[column] for a, b in pairs]))
    return found


def target_values(
    rows: List[dict], settings: Sequence[Tuple[int, int]]
) -> List[Tuple[str, float, List[float]]]:
    """(label, limit, ratio per setting) of each target of :data:`TARGETS` and :data:`PEER_TARGETS` that
    ``rows`` hold at every one of ``settings``. A time ratio is the median of the rounds' ratios
    (:func:`.stats.round_ratios`) where both modes have their rounds' times, else the ratio of the medians."""
    tune = {(r["batch_size"], r["input_size"]): r for r in rows if r["mode"] == "tune"}
    found = []
    if all(s in tune for s in settings):
        found = [(label, limit, [tune[s][column] for s in settings]) for label, column, limit in TARGETS]
    found += _peer_ratios(rows, list(settings))
    found = [
        (label, limit, _round_medians(rows, settings, label) or values) for label, limit, values in found
    ]
    return [(label, limit, values) for label, limit, values in found if all(v is not None for v in values)]


class _TimeEstimates(NamedTuple):
    paired: bool  # the two modes' times pair up round by round
    per_setting: List[Tuple[float, float, float]]  # (ratio, low, high)
    fewest: int  # the fewest times of either mode at any setting


def _time_pairs(rows: List[dict], settings: Sequence[Tuple[int, int]], label: str) -> Optional[List[tuple]]:
    """(mode's row, reference's row) per setting of a time target; None for a memory target or where a
    setting lacks a mode or its times."""
    modes = _time_modes(label)
    cell = by_setting_and_mode(rows)
    pairs = [(cell.get((*s, modes[0])), cell.get((*s, modes[1]))) for s in settings] if modes else []
    if not pairs or any(a is None or b is None or not a.get("times") or not b.get("times") for a, b in pairs):
        return None
    return pairs


def _in_rounds(pairs: List[tuple]) -> bool:
    """Whether the two modes' times pair up round by round at every setting (as many of each)."""
    return all(len(a["times"]) == len(b["times"]) for a, b in pairs)


def _time_estimates(pairs: List[tuple]) -> _TimeEstimates:
    """A time target's ratio and interval per setting: the rounds' median and :func:`round_ratio_interval`
    where the two modes pair up, else the medians' ratio and :func:`ratio_interval`."""
    fewest = min(min(len(a["times"]), len(b["times"])) for a, b in pairs)
    if _in_rounds(pairs):
        return _TimeEstimates(True, [round_ratio_interval(a["times"], b["times"]) for a, b in pairs], fewest)
    estimates = [
        (
            statistics.median(a["times"]) / statistics.median(b["times"]),
            *ratio_interval(a["times"], b["times"]),
        )
        for a, b in pairs
    ]
    return _TimeEstimates(False, estimates, fewest)


def _round_medians(
    rows: List[dict], settings: Sequence[Tuple[int, int]], label: str
) -> Optional[List[float]]:
    """The median of the round ratios per setting of a time target, or None where they cannot be paired."""
    pairs = _time_pairs(rows, settings, label)
    if not pairs or not _in_rounds(pairs):
        return None
    return [statistics.median(round_ratios(a["times"], b["times"])) for a, b in pairs]


def target_settings(rows: List[dict]) -> List[Tuple[int, int]]:
    """The settings a targets summary covers: those with tune, or every setting of a run without it."""
    tune = sorted({(r["batch_size"], r["input_size"]) for r in rows if r["mode"] == "tune"})
    return tune or sorted({(r["batch_size"], r["input_size"]) for r in rows})


def format_targets(rows: List[dict]) -> Optional[str]:
    """Tune's ratios against each target, per setting (:func:`target_values`: a time ratio is the median
    of the rounds' ratios), and whether every setting meets it; under each time ratio its interval
    (:func:`round_ratio_interval`) and whether the limit lies outside it. None when the run lacks tune or
    the modes a target compares with."""
    settings = target_settings(rows)
    if not settings:
        return None
    lines = [f"{'target':>34}" + "".join(f" {f'{b} x {s}':>9}" for b, s in settings) + "  met"]
    for label, limit, values in target_values(rows, settings):
        within = sum(v <= limit for v in values)
        met = "yes" if within == len(values) else f"no, {within} of {len(values)} within"
        lines.append(f"{f'{label} <= {limit:.2f}':>34}" + "".join(f" {v:>9.3f}" for v in values) + f"  {met}")
        spread = _spread_line(rows, settings, label, limit)
        if spread:
            lines.append(spread)
    if len(lines) == 1:
        return None
    if any(", rounds" in line for line in lines):
        lines.append(ROUNDS_NOTE)
    return "\n".join(lines)


#: What the targets' time ratios are, printed under them.
ROUNDS_NOTE = (
    "time ratios: the median over the rounds of one mode's time over the other's in the same round\n"
    "(each round runs every mode once; the table's time/ columns divide the modes' medians)"
)


def _time_modes(label: str) -> Optional[Tuple[str, str]]:
    """(mode, reference mode) of a time target's label, or None for a memory target."""
    for name, column, _ in TARGETS:
        if name == label and column.startswith("time_"):
            return "tune", column[len("time_vs_") :]
    for name, mode, ref, column, _ in PEER_TARGETS:
        if name == label and column == "median_s":
            return mode, ref
    return None


def _spread_line(
    rows: List[dict], settings: List[Tuple[int, int]], label: str, limit: float
) -> Optional[str]:
    """The line under a time ratio: its interval per setting (:func:`round_ratio_interval`, or
    :func:`ratio_interval` where the modes' times do not pair up), and whether the limit is outside every
    interval ("decided": never with fewer than :func:`min_rounds` rounds); None for a memory target or rows
    without times."""
    pairs = _time_pairs(rows, settings, label)
    if not pairs:
        return None
    found = _time_estimates(pairs)
    intervals = [(lo, hi) for _, lo, hi in found.per_setting]
    too_few = found.fewest < min_rounds()  # the interval is only the range then: it decides nothing
    undecided = [f"{b} x {s}" for (b, s), (lo, hi) in zip(settings, intervals) if too_few or lo <= limit < hi]
    verdict = "decided" if not undecided else "undecided at " + ", ".join(undecided)
    if too_few:
        unit = "rounds" if found.paired else "iterations a mode"
        verdict += f" ({found.fewest} {unit}; {min_rounds()} decide)"
    cells = "".join(f" {f'{lo:.2f}-{hi:.2f}':>9}" for lo, hi in intervals)
    title = f"{SPREAD_LEVEL:.0%} interval" + (", rounds" if found.paired else "")
    return f"{title:>34}" + cells + f"  {verdict}"
