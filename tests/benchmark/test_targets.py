"""tllib_tune.benchmark.targets: each target per setting, how many settings are within it, and the
interval under each time ratio that says whether a run decides it."""

from __future__ import annotations

import pytest

from tllib_tune.benchmark import format_targets
from tllib_tune.benchmark.stats import round_ratio_interval
from tllib_tune.benchmark.targets import target_values


def test_targets_summary_counts_the_settings_within_each_limit():

    def tune_row(batch, time_vs_deploy):
        ratios = {"memory_vs_deploy": 1.0, "memory_vs_eval": 0.48, "time_vs_eval": 0.9}
        return {
            "mode": "tune",
            "batch_size": batch,
            "input_size": 32,
            "time_vs_deploy": time_vs_deploy,
            **ratios,
        }

    lines = format_targets([tune_row(2, 1.02), tune_row(4, 1.10)]).splitlines()
    assert lines[0].split()[1:] == ["2", "x", "32", "4", "x", "32", "met"]
    assert lines[1].endswith("1.000     1.000  yes")
    assert lines[4].endswith("1.020     1.100  no, 1 of 2 within")
    # without deploy in the run there is nothing to compare with: that target is left out
    lines = format_targets([dict(tune_row(2, None), memory_vs_deploy=None)]).splitlines()
    assert [line.split("<=")[0].strip() for line in lines[1:]] == ["memory tune/eval", "time tune/eval"]
    assert format_targets([dict(tune_row(2, 1.0), mode="eval")]) is None


def test_targets_summary_says_where_the_spread_decides_a_time_target():
    def row(mode, times, batch):
        return {"mode": mode, "batch_size": batch, "input_size": 32, "times": times}

    tune_a, deploy_a = [1.0, 1.01, 0.99, 1.0, 1.0], [1.0] * 5  # 1.00: within 1.03 beyond the spread
    tune_b, deploy_b = [0.8, 1.0, 1.3, 1.0, 1.1], [1.0] * 5  # 1.00 too, but the spread holds 1.03
    rows = [
        row("tune", tune_a, 2),
        row("deploy", deploy_a, 2),
        row("tune", tune_b, 4),
        row("deploy", deploy_b, 4),
    ]
    for r in rows:
        r.update(memory_vs_deploy=1.0, memory_vs_eval=None, time_vs_eval=None, time_vs_deploy=1.0)
    lines = format_targets(rows).splitlines()
    assert lines[2].strip().startswith("time tune/deploy <= 1.03")
    assert lines[3].split()[:3] == ["90%", "interval,", "rounds"]  # each round's tune over its deploy
    assert lines[3].split()[3:5] == ["0.99-1.01", "0.80-1.30"]  # 5 rounds: their range covers 94 %
    assert lines[3].endswith("undecided at 4 x 32")
    assert lines[-2].startswith("time ratios: the median over the rounds")
    rows[2]["times"] = [1.0] * 5
    assert format_targets(rows).splitlines()[3].endswith("decided")
    for r in rows:  # 4 rounds: no interval of theirs reaches 90 %, so nothing is decided
        r["times"] = r["times"][:4]
    assert format_targets(rows).splitlines()[3].endswith("undecided at 2 x 32, 4 x 32 (4 rounds; 5 decide)")
    rows[2]["times"] = [1.0, 1.0]  # unequal counts: no rounds to pair, the medians' interval instead
    line = format_targets(rows).splitlines()[3]
    assert line.split()[:3] == ["90%", "interval", "0.99-1.00"] and line.endswith(
        "(2 iterations a mode; 5 decide)"
    )


def test_time_targets_are_the_rounds_median_with_their_interval():
    def deploy_ratio(rows):
        return {label: v for label, _, v in target_values(rows, [(2, 32)])}["time tune/deploy"]

    ratios = {"memory_vs_deploy": 1.0, "memory_vs_eval": None, "time_vs_eval": None, "time_vs_deploy": 9.9}
    tune = {"mode": "tune", "batch_size": 2, "input_size": 32, "times": [1.1, 2.2] * 2 + [1.1], **ratios}
    deploy = {"mode": "deploy", "batch_size": 2, "input_size": 32, "times": [1.0, 2.0] * 2 + [1.0]}
    assert deploy_ratio([tune, deploy]) == [pytest.approx(1.1)]  # 1.1 in every round, not the column's 9.9
    assert format_targets([tune, deploy]).splitlines()[3].split()[3:] == ["1.10-1.10", "decided"]
    deploy["times"] = [2.0, 2.0, 2.0, 2.0, 1.0]  # rounds 0.55, 1.1, 0.55, 1.1, 1.1; the medians' 1.1 / 2.0
    assert deploy_ratio([tune, deploy]) == [pytest.approx(1.1)]
    median, lo, hi = round_ratio_interval(tune["times"], deploy["times"])
    assert (median, lo, hi) == (pytest.approx(1.1), 0.55, pytest.approx(1.1))
