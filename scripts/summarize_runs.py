"""Summarize fine-tuning runs in the layout of the paper's Table 3: accuracy mean +- std over seeds,
memory, time per iteration, and the relative savings of Tune mode over Train mode.

    python scripts/summarize_runs.py runs/paper                 # every run directory below runs/paper
    python scripts/summarize_runs.py runs/a runs/b --csv out.csv

Reads each run's summary.json (written by examples/finetune.py). Runs are grouped by data set, backbone,
input size, sample rate and mode; only completed runs count (others are listed as skipped). Memory is
the peak memory (CUDA max allocated on a GPU; the process's peak RSS on a CPU, which says little) and
the activation memory (bytes saved for backward in one iteration, the same on every machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

NAMES = {
    "cub200": "CUB-200",
    "aircraft": "Aircraft",
    "stanford_cars": "Stanford Cars",
    "cars": "Stanford Cars",
}
MODE_ORDER = ("train", "eval", "tune", "deploy", "inplace-abn")
Key = Tuple[str, str, int, int]


def find_summaries(paths: Iterable[Path]) -> List[Path]:
    """summary.json files in the given run directories or anywhere below the given folders."""
    found: List[Path] = []
    for path in paths:
        if path.is_file() and path.name == "summary.json":
            found.append(path)
        elif (path / "summary.json").is_file():
            found.append(path / "summary.json")
        elif path.is_dir():
            found.extend(sorted(path.rglob("summary.json")))
        else:
            raise FileNotFoundError(f"{path} is neither a run directory nor a folder of runs")
    return found


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _avg(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def collect(summaries: Iterable[Path]) -> Tuple[Dict[Key, Dict[str, List[Dict[str, Any]]]], List[str]]:
    """Completed runs grouped by (dataset, arch, input size, sample rate) then mode; and the skipped ones."""
    groups: Dict[Key, Dict[str, List[Dict[str, Any]]]] = {}
    skipped: List[str] = []
    for path in summaries:
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            skipped.append(f"{path.parent}: unreadable summary.json ({exc})")
            continue
        if summary.get("status") != "completed" or summary.get("test_acc1") is None:
            skipped.append(f"{path.parent}: status {summary.get('status', 'unknown')}")
            continue
        dataset = summary.get("dataset", "?")
        key = (
            NAMES.get(dataset, dataset),
            summary.get("arch", "?"),
            summary.get("input_size", 0),
            summary.get("sample_rate", 100),
        )
        summary["_dir"] = str(path.parent)
        groups.setdefault(key, {}).setdefault(str(summary.get("mode", "?")), []).append(summary)
    return groups, skipped


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _saving(base: Optional[float], new: Optional[float]) -> str:
    if base is None or new is None or base == 0:
        return "-"
    return f"{100.0 * (base - new) / base:+.1f}%"


def table_rows(groups: Dict[Key, Dict[str, List[Dict[str, Any]]]]) -> List[List[str]]:
    """Rows of the table: one per (group, mode), then a 'tune vs train' row where both modes are present."""
    rows: List[List[str]] = []
    for key in sorted(groups):
        dataset, arch, size, rate = key
        by_mode = groups[key]
        stats: Dict[str, Dict[str, Optional[float]]] = {}
        modes = sorted(
            by_mode, key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m)
        )
        for mode in modes:
            runs = by_mode[mode]
            acc, std = mean_std([r["test_acc1"] for r in runs])
            stats[mode] = {
                "acc": acc,
                "peak": _avg(runs, "peak_gb"),
                "act": _avg(runs, "activations_mb"),
                "time": _avg(runs, "iter_time_s"),
            }
            rows.append(
                [
                    dataset,
                    arch,
                    str(size),
                    str(rate),
                    mode,
                    f"{acc:.2f} ± {std:.2f}",
                    _fmt(stats[mode]["peak"], ".2f"),
                    _fmt(stats[mode]["act"], ".1f"),
                    _fmt(stats[mode]["time"], ".3f"),
                    str(len(runs)),
                ]
            )
        if "train" in stats and "tune" in stats:
            train, tune = stats["train"], stats["tune"]
            rows.append(
                [
                    dataset,
                    arch,
                    str(size),
                    str(rate),
                    "tune vs train",
                    f"{tune['acc'] - train['acc']:+.2f}",
                    _saving(train["peak"], tune["peak"]),
                    _saving(train["act"], tune["act"]),
                    _saving(train["time"], tune["time"]),
                    "",
                ]
            )
    return rows


HEADER = [
    "Dataset",
    "Backbone",
    "Input",
    "SR %",
    "Mode",
    "Top-1 acc. (%)",
    "Peak memory (GB)",
    "Activations (MiB)",
    "Time/iter (s)",
    "Runs",
]


def markdown(rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or folders holding them")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    try:
        summaries = find_summaries(args.paths)
    except FileNotFoundError as exc:
        print(f"summarize_runs.py: error: {exc}", file=sys.stderr)
        return 1
    groups, skipped = collect(summaries)
    if not groups:
        print(
            f"summarize_runs.py: error: no completed run (summary.json with status 'completed') under "
            f"{', '.join(map(str, args.paths))}" + (f"; skipped: {'; '.join(skipped)}" if skipped else ""),
            file=sys.stderr,
        )
        return 1
    rows = table_rows(groups)
    print(markdown(rows))
    print(
        "\nTop-1: final-epoch test accuracy, mean ± sample std over seeds. 'tune vs train': accuracy "
        "difference in points; memory and time as savings relative to Train mode (positive = Tune saves)."
    )
    if skipped:
        print("\nSkipped (not completed): " + "; ".join(skipped))
    if args.csv is not None:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
