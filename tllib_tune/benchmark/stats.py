"""The statistics of timed iterations: how far a ratio of two modes' times can be trusted.

On a shared machine one iteration scatters by +-15 % and the machine's speed drifts from minute to minute.
:func:`ratio_interval` treats the two modes' iterations as independent samples; :func:`round_ratios` pairs
the iterations of one round, which ran next to each other (:func:`.measure.timing_order`), so that the drift
divides out, and :func:`round_ratio_interval` gives the median of those ratios with its interval (exact
order statistics, :func:`median_interval`). The first interval is a seeded bootstrap: the same times give
the same interval.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import List, Sequence, Tuple

__all__ = [
    "SPREAD_LEVEL",
    "ratio_interval",
    "round_ratios",
    "round_ratio_interval",
    "median_interval",
    "min_rounds",
]

#: The confidence of the intervals printed under each time ratio.
SPREAD_LEVEL = 0.90


def _bootstrap(statistic, resamples: int, level: float, seed: int) -> Tuple[float, float]:
    """The central ``level`` interval of ``statistic(rng)`` over ``resamples`` seeded draws."""
    rng = random.Random(seed)
    values = sorted(statistic(rng) for _ in range(resamples))
    tail = int(round((1 - level) / 2 * resamples))
    return values[tail], values[resamples - 1 - tail]


def ratio_interval(
    times: Sequence[float], ref_times: Sequence[float], *, level: float = SPREAD_LEVEL, resamples: int = 2000,
    seed: int = 0,
) -> Tuple[float, float]:  # fmt: skip
    """A bootstrap interval of median(times) / median(ref_times) at ``level``: both samples resampled
    with replacement ``resamples`` times (seeded: the same run gives the same interval). On a noisy
    machine a ratio of medians moves by more than a few per cent from run to run; a limit inside this
    interval is not decided by the run. It ignores which iterations ran together: see
    :func:`round_ratio_interval` for the tighter interval of a run's rounds."""
    if not times or not ref_times:
        raise ValueError("ratio_interval needs at least one time in `times` and in `ref_times`")

    def statistic(rng: random.Random) -> float:
        resampled = statistics.median(rng.choices(times, k=len(times)))
        return resampled / statistics.median(rng.choices(ref_times, k=len(ref_times)))

    return _bootstrap(statistic, resamples, level, seed)


def round_ratios(times: Sequence[float], ref_times: Sequence[float]) -> List[float]:
    """Each round's ratio: the i-th timed iteration of a mode over the reference's i-th.

    The benchmark runs every mode once per round (:func:`.measure.timing_order`), so the i-th
    iterations of two modes ran next to each other; the machine's slower and faster minutes, most of the
    noise here, divide out of their ratio."""
    if not times or len(times) != len(ref_times):
        raise ValueError(
            f"round_ratios needs `times` and `ref_times` of one run's rounds, as many of each (got "
            f"{len(times)} and {len(ref_times)})"
        )
    return [t / r for t, r in zip(times, ref_times)]


def _median_below(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) < k): how often fewer than k of n values fall below the median."""
    return sum(math.comb(n, i) for i in range(k)) / 2**n


def min_rounds(level: float = SPREAD_LEVEL) -> int:
    """The fewest values whose :func:`median_interval` covers the median with probability ``level``
    (5 at 0.90: their smallest and largest)."""
    n = 1
    while 2 * _median_below(n, 1) > 1 - level:
        n += 1
    return n


def median_interval(values: Sequence[float], level: float = SPREAD_LEVEL) -> Tuple[float, float]:
    """A distribution-free interval of the median of the distribution ``values`` come from: the order
    statistics x_(k) and x_(n+1-k), k the largest with 2 P(Binomial(n, 1/2) < k) <= 1 - ``level``. It
    covers the median with probability at least ``level`` for independent values of any continuous
    distribution. Fewer than :func:`min_rounds` values reach no such k: then (min, max), which covers it
    less often."""
    if not values:
        raise ValueError("median_interval needs at least one value")
    ordered, n = sorted(values), len(values)
    k = 1
    while k < (n + 1) // 2 and 2 * _median_below(n, k + 1) <= 1 - level:
        k += 1
    return ordered[k - 1], ordered[n - k]


def round_ratio_interval(
    times: Sequence[float], ref_times: Sequence[float], *, level: float = SPREAD_LEVEL
) -> Tuple[float, float, float]:
    """(median, low, high) of the :func:`round_ratios`: their median and its :func:`median_interval`
    (exact, no resampling). Pooled runs keep their rounds in order, so their times pair up the same
    way; with fewer than :func:`min_rounds` rounds the interval is their range and decides nothing."""
    ratios = round_ratios(times, ref_times)
    return (statistics.median(ratios), *median_interval(ratios, level))
