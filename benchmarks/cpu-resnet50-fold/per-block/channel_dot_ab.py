"""Gamma's per-channel dot product in Tune's backward, four ways, timed on ResNet-50's 53 convolution weights.

Tune's backward computes sum_k dL/dW'_ck W_ck per output channel (:func:`tllib_tune.modules.fold.channel_dot`,
``torch.linalg.vecdot`` over the flattened weight). This asks whether another torch formulation of the same
dot product is cheaper: ``(a * b).sum``, which writes a weight-sized product first, ``torch.bmm`` and
``torch.einsum``. Each round times every form once over all 53 weights (float32, the run's threads), in an
order that rotates from round to round; each form must equal the float64 reference before it is timed.

    python benchmarks/cpu-resnet50-fold/per-block/channel_dot_ab.py [ROUNDS] [THREADS]
"""

import statistics
import sys
import time

import torch
import torchvision

from tllib_tune.modules.fold import channel_dot

FORMS = {
    "vecdot (library)": channel_dot,
    "mul + sum": lambda a, b: (a * b).sum((1, 2, 3)),
    "bmm": lambda a, b: torch.bmm(a.flatten(1).unsqueeze(1), b.flatten(1).unsqueeze(2)).view(-1),
    "einsum": lambda a, b: torch.einsum("ck,ck->c", a.flatten(1), b.flatten(1)),
}


def weights_and_grads() -> list:
    """(gradient, weight) pairs shaped like ResNet-50's convolution weights, in float32."""
    torch.manual_seed(0)
    weights = [p.detach() for p in torchvision.models.resnet50().parameters() if p.dim() == 4]
    return [(torch.randn_like(w), w) for w in weights]


def check(pairs: list) -> None:
    """Every form equals the float64 dot product to float32 round-off."""
    for grad, weight in pairs:
        reference = (grad.double() * weight.double()).sum((1, 2, 3))
        for name, form in FORMS.items():
            err = ((form(grad, weight).double() - reference).abs().max() / reference.abs().max()).item()
            assert err < 1e-5, f"{name}: relative error {err:.1e}"


def main(rounds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    pairs = weights_and_grads()
    check(pairs)
    names = list(FORMS)
    times = {name: [] for name in names}
    for r in range(rounds + 2):  # the first two rounds warm up and are dropped
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for grad, weight in pairs:
                FORMS[name](grad, weight)
            if r >= 2:
                times[name].append(time.perf_counter() - start)
    base = times[names[0]]
    print(f"ResNet-50, {len(pairs)} weights, {sum(w.numel() for _, w in pairs) / 1e6:.1f} M elements, "
          f"{threads} threads, {rounds} rounds; ms over all weights per round")  # fmt: skip
    print(f"{'form':18s} {'median ms':>10s} {'ratio to vecdot':>16s} {'quartiles':>14s}")
    for name in names:
        ratios = sorted(t / b for t, b in zip(times[name], base))
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"{name:18s} {statistics.median(times[name]) * 1e3:10.2f} {statistics.median(ratios):16.3f} "
              f"{q1:6.3f}-{q3:.3f}")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
