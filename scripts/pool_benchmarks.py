"""Several runs of the benchmark (scripts/benchmark_modes.py) as one.

    python scripts/pool_benchmarks.py bench/run1 bench/run2 bench/run3 --out bench/pooled

The same program as `tllib-tune pool` (tllib_tune.benchmark.pool): reads each run's results.csv, pools
the timed iterations of every (setting, mode) that all runs hold, prints the table and the targets of the
pooled iterations (ratios of the pooled medians, with their interval), then each target's lowest and
highest ratio over the runs and how many runs met it. Runs must be of one arch, device, amp and memory
layout, and keep the same activation memory (one commit).
"""

import sys

from tllib_tune.benchmark.cli import pool_main

if __name__ == "__main__":
    sys.exit(pool_main())
