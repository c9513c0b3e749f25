"""What plain_step_ab.py and hooks_step_ab.py share: a Tune model and its Deploy copy of one ResNet-50, one
fwd+bwd step with a given Tune routine patched in, the test for the calls a routine may take over, and the
interleaved timing of several variants with its printout. Not a script; imported from this folder.
"""

import copy
import statistics as st
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import tllib_tune.modules.convbn as cb
from tllib_tune import set_mode
from tllib_tune.benchmark.stats import round_ratios
from tllib_tune.models import get_model

GENERIC_TUNE = cb._tune


def parse_args() -> Tuple[int, int, int]:
    """(N, HW, ROUNDS) from the command line; a fourth argument sets the thread count."""
    n, hw, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        torch.set_num_threads(int(sys.argv[4]))
    return n, hw, rounds


def plain_weight_call(tensors, spec, requested) -> bool:
    """Whether a Tune call uses the "weight" strategy in one float dtype without autocast, operator bias or
    non-affine BatchNorm: the calls a prototype routine takes over (the rest stay with the library's)."""
    x, weight, bias, gamma, beta, mean, var = tensors
    dtypes = {t.dtype for t in (x, weight, gamma, beta, mean, var) if t is not None}
    return (
        cb.choose_strategy(spec, x, weight, x.dtype, requested) == "weight"
        and bias is None
        and gamma is not None
        and (dtypes <= {torch.float32} or dtypes <= {torch.float64})
        and not torch.is_autocast_enabled(x.device.type)
    )


class Bench:
    """ResNet-50 (seeded random weights) in tune mode and a Deploy copy, an input of N x 3 x HW x HW and a
    fixed gradient for the backbone's feature map."""

    def __init__(self, n: int, hw: int):
        torch.manual_seed(0)
        self.model = get_model("resnet50", pretrained=False)
        self.deploy = copy.deepcopy(self.model)
        set_mode(self.deploy, "deploy")
        set_mode(self.model, "tune")
        self.x = torch.randn(n, 3, hw, hw)
        with torch.no_grad():
            self.g = torch.randn_like(self.deploy(self.x))

    def step(self, m: torch.nn.Module, tune: Callable = GENERIC_TUNE) -> Tuple[float, List]:
        """One timed forward + backward of ``m`` with ``tune`` as the library's Tune routine; returns
        (seconds, the parameters' gradients), the gradients cleared on the model."""
        cb._tune = tune
        try:
            t0 = time.perf_counter()
            m(self.x).backward(self.g)
            elapsed = time.perf_counter() - t0
        finally:
            cb._tune = GENERIC_TUNE
        grads = [p.grad for p in m.parameters()]
        for p in m.parameters():
            p.grad = None
        return elapsed, grads


def bitwise_equal(a: Sequence, b: Sequence) -> bool:
    """Whether two lists of gradients (None where absent) are equal to the bit."""
    return all(u is v is None or torch.equal(u, v) for u, v in zip(a, b))


def interleave(variants: Dict[str, Callable], rounds: int) -> Dict[str, List[float]]:
    """Each variant's step times over ``rounds`` rounds after two warm-up rounds, every round running
    each variant once, in reversed order every other round."""
    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds + 2):
        for k in names if r % 2 == 0 else names[::-1]:
            t = variants[k]()[0]
            if r >= 2:
                times[k].append(t)
    return times


def report(times: Dict[str, List[float]], pairs: Sequence[Tuple[str, str]]) -> None:
    """Print each variant's median step, then for each pair the median and quartiles of the per-round
    ratio."""
    for k, ts in times.items():
        print(f"{k:8s} median step {st.median(ts):.4f} s")
    for a, b in pairs:
        ratios = round_ratios(times[a], times[b])
        q = st.quantiles(ratios, n=4)
        print(f"{a}/{b}: median {st.median(ratios):.4f} (quartiles {q[0]:.4f}-{q[2]:.4f})")
