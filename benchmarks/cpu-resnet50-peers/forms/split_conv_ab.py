"""Is one convolution backward for both gradients cheaper than two, one per direction? (An experiment for
forms_ab.py's "split" form, in eager code; the library is not changed by it.)

At four ResNet-50 shapes at batch 16 x 224 (channels-last, float32), ``aten.convolution_backward`` with
mask [True, True, True] against two calls, [False, True, True] then [True, False, False]; each round
times the one call, then the two, and the median per-round ratio is printed. Usage, from the repository root:

    python benchmarks/cpu-resnet50-peers/forms/split_conv_ab.py [ROUNDS]
"""

import statistics as st
import sys
import time

import torch

SHAPES = ((16, 64, 64, 56, 3), (16, 256, 64, 56, 1), (16, 256, 256, 14, 3), (16, 512, 512, 7, 3))


def ratio(n: int, ci: int, co: int, hw: int, k: int, rounds: int) -> float:
    """Median over ``rounds`` of (two calls' time) / (one call's time) for one convolution shape."""
    gen = torch.Generator().manual_seed(0)
    x, w, g = (
        torch.randn(shape, generator=gen).to(memory_format=torch.channels_last)
        for shape in ((n, ci, hw, hw), (co, ci, k, k), (n, co, hw, hw))
    )
    args = ([co], (1, 1), (k // 2, k // 2), (1, 1), False, (0, 0), 1)
    backward = torch.ops.aten.convolution_backward

    def one():
        backward(g, x, w, *args, [True, True, True])

    def two():
        backward(g, x, w, *args, [False, True, True])
        backward(g, x, w, *args, [True, False, False])

    one()  # warm-up: oneDNN's first call of a shape sets it up
    two()
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        one()
        t1 = time.perf_counter()
        two()
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    return st.median(ratios)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    print(f"{torch.get_num_threads()} threads, {rounds} rounds")
    for n, ci, co, hw, k in SHAPES:
        r = ratio(n, ci, co, hw, k, rounds)
        print(f"{n} x {ci} -> {co} at {hw} x {hw}, {k} x {k}: two calls / one call {r:.3f}")
