"""The one table scripts/device_check.sh ends with: the CUDA tests' outcome, the benchmark's rows (time,
saved-for-backward and peak memory, ratios) and each mode's short fine-tune, read from the check's
output directory.

    python -m tllib_tune.benchmark.device_summary OUT_DIR     # prints it and writes OUT_DIR/summary.md
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..common import atomic_write

__all__ = ["summary_table", "main"]


def _num(value: str, spec: str) -> str:
    return "-" if value in ("", None) else format(float(value), spec)


def _benchmark_lines(csv_path: Path) -> List[str]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [
        f"benchmark ({csv_path.parent.name}):",
        "| setting | mode | time s | time/eval | act MiB | peak MiB (CUDA) | peak saved MiB | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} x {r['input_size']} | {r['mode']} | {_num(r['median_s'], '.4f')} | "
            f"{_num(r['time_vs_eval'], '.3f')} | {_num(r['activation_mb'], '.1f')} | "
            f"{_num(r['peak_mb'], '.1f')} | "
            f"{_num(r['peak_saved_mb'], '.1f')} | {_num(r['compile_s'], '.1f')} |"
        )
    return lines


def _finetune_line(summary_path: Path) -> str:
    s = json.loads(summary_path.read_text())
    return (
        f"| {s.get('mode')} | {s.get('status')} | {s.get('iters_per_epoch')} | "
        f"{_num(s.get('iter_time_s', ''), '.4f')} | "
        f"{_num(s.get('activations_mb', ''), '.1f')} | {_num(s.get('peak_gb', ''), '.2f')} | "
        f"{_num(s.get('test_acc1', ''), '.2f')} |"
    )


def summary_table(out: Path, pytest_status: Optional[str] = None) -> str:
    """Markdown: the tests' outcome, every benchmark CSV under ``out``, every fine-tune's summary.json."""
    out = Path(out)
    lines = [f"device check in {out}"]
    status = pytest_status
    if status is None and (out / "pytest.txt").exists():
        tail = [line for line in (out / "pytest.txt").read_text().splitlines() if line.strip()]
        status = tail[-1] if tail else "no output"
    lines.append(f"cuda tests: {status or 'not run'}")
    for csv_path in sorted(out.glob("bench*/results.csv")):
        lines += [""] + _benchmark_lines(csv_path)
    summaries = sorted(out.glob("finetune/*/summary.json"))
    if summaries:
        lines += ["", "fine-tune:", "| mode | status | steps | s/step | act MiB | peak GB | test acc1 |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [_finetune_line(p) for p in summaries]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(f"usage: python -m tllib_tune.benchmark.device_summary OUT_DIR (got {args})", file=sys.stderr)
        return 2
    table = summary_table(Path(args[0]))
    with atomic_write(str(Path(args[0]) / "summary.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
