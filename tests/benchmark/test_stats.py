"""tllib_tune.benchmark.stats: the intervals of a ratio of two modes' times, from independent samples
and from the rounds' paired ratios."""

from __future__ import annotations

import statistics

import pytest
import torch

from tllib_tune.benchmark.stats import (
    median_interval,
    min_rounds,
    ratio_interval,
    round_ratio_interval,
    round_ratios,
)


def test_ratio_interval_is_exact_without_noise_and_narrows_with_repeats():
    assert ratio_interval([2.0] * 5, [4.0] * 7) == (0.5, 0.5)
    gen = torch.Generator().manual_seed(0)

    def noisy(n, centre):  # +-15 % around centre, as a shared CPU scatters
        return (centre * (1 + 0.3 * (torch.rand(n, generator=gen) - 0.5))).tolist()

    few_a, few_b, many_a, many_b = noisy(7, 1.0), noisy(7, 1.0), noisy(301, 1.0), noisy(301, 1.0)
    lo_few, hi_few = ratio_interval(few_a, few_b)
    lo_many, hi_many = ratio_interval(many_a, many_b)
    assert lo_few <= statistics.median(few_a) / statistics.median(few_b) <= hi_few
    assert lo_many < 1.0 < hi_many and hi_many - lo_many < (hi_few - lo_few) / 3
    assert ratio_interval(few_a, few_b) == (lo_few, hi_few)  # seeded: a report does not change on reprint
    with pytest.raises(ValueError, match="ref_times"):
        ratio_interval([1.0], [])


def test_round_ratios_divide_out_what_a_round_shares():
    """On a machine whose speed drifts between rounds, each round's ratio keeps the modes' true ratio,
    while the samples of the two modes, taken apart, mix fast and slow rounds."""
    gen = torch.Generator().manual_seed(0)
    speed = (1 + 0.4 * torch.rand(41, generator=gen)).tolist()  # the machine, round by round
    jitter = (1 + 0.01 * (torch.rand(82, generator=gen) - 0.5)).tolist()
    tune = [1.03 * v * j for v, j in zip(speed, jitter[:41])]
    deploy = [v * j for v, j in zip(speed, jitter[41:])]
    assert round_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    median, lo, hi = round_ratio_interval(tune, deploy)
    assert lo <= 1.03 <= hi and hi - lo < 0.01 and median == pytest.approx(1.03, abs=0.005)
    lo_apart, hi_apart = ratio_interval(tune, deploy)
    assert hi_apart - lo_apart > 5 * (hi - lo)
    with pytest.raises(ValueError, match="as many of each"):
        round_ratios([1.0, 2.0], [1.0])


def test_median_interval_covers_the_median_as_often_as_it_says():
    assert min_rounds(0.90) == 5 and min_rounds(0.99) == 8
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)  # 5 values: the range covers 94 %
    assert median_interval([float(v) for v in range(1, 10)]) == (2.0, 8.0)  # 96 %; (3, 7) would be 82 %
    assert median_interval([2.0]) == (2.0, 2.0)
    gen = torch.Generator().manual_seed(0)
    for n, level in [(9, 0.90), (40, 0.90), (40, 0.50)]:
        samples = torch.rand(4000, n, generator=gen)  # uniform: the median is 0.5
        covered = sum(lo <= 0.5 <= hi for lo, hi in (median_interval(s.tolist(), level) for s in samples))
        assert level <= covered / 4000 < level + 0.12, (n, level, covered)
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])
