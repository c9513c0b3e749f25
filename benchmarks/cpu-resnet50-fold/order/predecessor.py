"""An experiment record: does the mode run just before move a mode's time?

Eval, tune and deploy in a cyclic de Bruijn order (every ordered pair of modes, a mode after itself
included, once per cycle of 9 iterations), ResNet-50 on the CPU; prints each mode's median time by
predecessor. Run 1 (5 cycles) and run 2 (8 cycles) at 16 x 224, with the allocator variables of
docs/benchmarks.md (retained memory):

    python benchmarks/cpu-resnet50-fold/order/predecessor.py 16 224 8 times.json
"""

import collections
import json
import statistics
import sys

from tllib_tune.benchmark.measure import BenchmarkSettings, IterationBenchmark

NAMES = {"e": "eval", "t": "tune", "d": "deploy"}
CYCLE = "eetedttdd"  # ee et te ed dt tt td dd, and de around the cycle


def main(batch_size: int, input_size: int, cycles: int, out: str) -> None:
    bench = IterationBenchmark(BenchmarkSettings(arch="resnet50", modes=tuple(NAMES.values())))
    x, y = bench.batch(batch_size, input_size, seed=1)
    for mode in list(NAMES.values()) * 2:  # warm-up
        bench.iteration(mode, x, y)
    times = collections.defaultdict(list)
    previous = CYCLE[-1]
    for cycle in range(cycles):
        for mode in CYCLE:
            times[(mode, previous)].append(bench.iteration(NAMES[mode], x, y))
            previous = mode
        print("cycle", cycle, flush=True)
    with open(out, "w") as f:
        json.dump({f"{m}<{p}": v for (m, p), v in times.items()}, f)
    for m in NAMES:
        row = {p: round(statistics.median(times[(m, p)]), 4) for p in NAMES}
        print(NAMES[m], "by predecessor:", row, "n=", len(times[(m, "e")]))
    median = {
        m: statistics.median([t for (mm, _), ts in times.items() if mm == m for t in ts]) for m in NAMES
    }
    print("overall medians", median, "tune/deploy", median["t"] / median["d"])


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
