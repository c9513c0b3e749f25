"""Several benchmark runs as one: read each run's results.csv back, put the timed iterations of every
(setting, mode) together, and say how far the runs' own ratios scatter.

On a noisy machine one run's ratio of medians moves by more than a target's margin, and its interval
(:mod:`.stats`) holds the limit. Runs of the same code measure the same memory to the
byte and time the same work, so their iterations can be pooled: the pooled interval narrows with the
square root of the iterations, while each run's own ratio, listed beside it, shows the run-to-run spread.

    runs = [read_rows(d) for d in ("bench/run1", "bench/run2", "bench/run3")]
    pooled, left_out = pool_rows(runs)
    print(format_targets(pooled))       # the pooled ratios and their intervals
    print(format_run_spread(runs, pooled))  # each target's lowest and highest ratio over the runs
"""

from __future__ import annotations

import csv
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .report import COLUMNS, add_ratios
from .targets import target_settings, target_values

__all__ = ["read_rows", "pool_rows", "format_run_spread", "RUN_KEYS"]

#: The columns every pooled run must agree on: what was measured, and how (threads and environment only
#: where both runs recorded them: results.csv has had them since December 2026).
RUN_KEYS = ("arch", "device", "amp", "channels_last", "threads", "environment")

#: Columns a results.csv written before they existed lacks (read as None: not known).
_LATER_COLUMNS = ("threads", "environment")
_INTS = ("batch_size", "input_size", "page_faults", "threads")
_FLOATS = ("median_s", "min_s", "activation_mb", "peak_mb", "peak_saved_mb", "compile_s")
Key = Tuple[int, int, str]


def _results_path(path: str) -> str:
    return os.path.join(path, "results.csv") if os.path.isdir(path) else path


def _parse(line: dict, where: str) -> dict:
    row = {k: line[k] for k in ("arch", "device", "amp", "mode")}
    row["channels_last"] = line["channels_last"] == "True"
    for column in _INTS + _FLOATS:
        text = line.get(column) or ""
        row[column] = None if text == "" else (int(text) if column in _INTS else float(text))
    row["note"] = line["note"] or None
    row["environment"] = line.get("environment") or None
    try:
        row["times"] = [float(t) for t in line["times_s"].split()]
    except ValueError:
        raise ValueError(f"{where}: times_s {line['times_s']!r} is not a list of seconds") from None
    if not row["times"]:
        raise ValueError(f"{where}: {row['mode']} has no timed iterations (times_s is empty)")
    return row


def read_rows(path: str) -> List[dict]:
    """The rows of a benchmark run (``tllib-tune benchmark --out``'s folder, or its results.csv), as
    :func:`.report.rows_for` made them, ratios included.

    Raises FileNotFoundError for a path without results.csv, ValueError for a file that is not one the
    benchmark wrote, or one written before it kept every timed iteration (no times_s column)."""
    csv_path = _results_path(path)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"{path}: no results.csv there; give a folder that `tllib-tune benchmark --out` wrote, or its "
            "results.csv"
        )
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in _LATER_COLUMNS]
        if "times_s" in missing:
            raise ValueError(
                f"{csv_path}: no times_s column (written before the benchmark kept every timed "
                "iteration); rerun the benchmark to pool its iterations"
            )
        if missing:
            raise ValueError(f"{csv_path}: not a benchmark's results.csv (no {', '.join(missing)} column)")
        rows = [_parse(line, f"{csv_path} line {n}") for n, line in enumerate(reader, start=2)]
    if not rows:
        raise ValueError(f"{csv_path}: holds no results")
    return add_ratios(rows)


def _check_same_runs(runs: Sequence[List[dict]], names: Sequence[str]) -> None:
    """A ValueError naming two runs that differ in one of :data:`RUN_KEYS` (None: not recorded, skipped)."""
    seen: Dict[str, Tuple[object, str]] = {}  # key -> (the first recorded value, the run that had it)
    for rows, name in zip(runs, names):
        for row in rows:
            for key in RUN_KEYS:
                if row[key] is None:
                    continue
                value, where = seen.setdefault(key, (row[key], name))
                if row[key] != value:
                    raise ValueError(
                        f"{name} measured {key}={row[key]!r}, {where} {key}={value!r}: pool only runs of one "
                        f"{', '.join(RUN_KEYS)}"
                    )


def _pooled_row(cells: List[dict], names: Sequence[str]) -> dict:
    first = cells[0]
    for cell, name in zip(cells, names):
        if cell["activation_mb"] != first["activation_mb"]:
            raise ValueError(
                f"{first['mode']} at {first['batch_size']} x {first['input_size']} kept "
                f"{first['activation_mb']:.3f} MiB in {names[0]} and {cell['activation_mb']:.3f} in {name}: "
                "the runs measured different code; pool only runs of one commit"
            )
    times = [t for cell in cells for t in cell["times"]]

    def over_runs(column: str, how) -> Optional[float]:
        values = [cell[column] for cell in cells if cell[column] is not None]
        return how(values) if values else None

    row = dict(first, times=times, median_s=statistics.median(times), min_s=min(times))
    row.update(peak_mb=over_runs("peak_mb", max), peak_saved_mb=over_runs("peak_saved_mb", max))
    row.update(compile_s=over_runs("compile_s", statistics.median))
    faults = over_runs("page_faults", statistics.median)
    row["page_faults"] = None if faults is None else int(faults)
    return row


def pool_rows(
    runs: Sequence[List[dict]], names: Optional[Sequence[str]] = None
) -> Tuple[List[dict], List[str]]:
    """One row per (setting, mode) that every run holds, with the iterations of all runs (in run order),
    their median and minimum, the median page faults and compile time, the largest peaks, and the ratios
    recomputed from the pooled medians; and the "mode at setting" that only some runs hold (left out).

    ``names`` (default "run 1", "run 2", ...) name the runs in errors: a ValueError when they measured
    another arch, device, amp or memory layout, or the same mode with other activation memory."""
    if not runs or any(not rows for rows in runs):
        raise ValueError("pool_rows needs at least one run, each with at least one row")
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(runs))]
    _check_same_runs(runs, names)
    cells: List[Dict[Key, dict]] = [
        {(r["batch_size"], r["input_size"], r["mode"]): r for r in rows} for rows in runs
    ]
    common = [key for key in cells[0] if all(key in c for c in cells[1:])]
    every = {key for c in cells for key in c}
    left_out = sorted(f"{m} at {b} x {s}" for b, s, m in every.difference(common))
    pooled = [_pooled_row([c[key] for c in cells], names) for key in common]
    return add_ratios(pooled), left_out


def format_run_spread(runs: Sequence[List[dict]], pooled: List[dict]) -> Optional[str]:
    """Each target of the pooled summary with, per setting, the lowest and highest of the runs' own
    ratios and how many runs were within the limit; None when no target is in every run."""
    settings = target_settings(pooled)
    per_run = [{label: values for label, _, values in target_values(rows, settings)} for rows in runs]
    lines = [f"{'target':>34}" + "".join(f" {f'{b} x {s}':>19}" for b, s in settings)]
    for label, limit, _ in target_values(pooled, settings):
        if not all(label in found for found in per_run):
            continue
        cells = ""
        for i in range(len(settings)):
            values = [found[label][i] for found in per_run]
            within = sum(v <= limit for v in values)
            cells += f" {f'{min(values):.3f}-{max(values):.3f} {within}/{len(values)}':>19}"
        lines.append(f"{f'{label} <= {limit:.2f}':>34}{cells}")
    return "\n".join(lines) if len(lines) > 1 else None
