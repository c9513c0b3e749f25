"""Measuring one fine-tuning iteration per mode: the model, the iteration, the interleaved timing.

One iteration = forward of a zoo backbone plus a linear head, cross-entropy, backward, SGD step. For every
(batch size, input size) the modes run interleaved, in rounds of every mode whose order changes from one
round to the next (:func:`timing_order`: each mode takes every place and follows every other mode equally
often), so that neither drift nor the mode run just before hits one mode more than another. Activation
memory is the exact saved-for-backward byte count (parameters excluded); on CUDA the peak allocated memory
is taken too, and everywhere the process's minor page faults per iteration (fresh memory pages the OS had
to map: on the CPU a large share of the time).

Besides the blocks' own modes the run can hold what users would pick instead (:mod:`.peers`):
torch.compile variants, each compiled right before its setting is measured (its first iteration timed
apart as compile time), and checkpointing per stage (:mod:`tllib_tune.utils.checkpointing`, in its
reentrant form). For every mode the step's peak of live saved tensors is counted as well (recomputation
included).
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import ConvBN, Mode, set_mode
from ..engine import amp_dtype
from ..models import get_model
from ..utils.checkpointing import backbone_stages, disable_grad_checkpointing, enable_grad_checkpointing
from ..utils.feature_maps import batch_statistics_problem
from ..utils.memory import PeakSavedMeter, SavedTensorMeter
from .peers import (
    COMPILED_MODES,
    PEER_MODES,
    base_mode,
    compile_settings,
    pass_available,
    torchvision_peer,
)

__all__ = [
    "MODE_CHOICES",
    "DEFAULT_MODES",
    "ALL_MODES",
    "TIMING_ENV",
    "BenchmarkSettings",
    "Result",
    "Net",
    "IterationBenchmark",
    "keep_folded_forward",
    "minor_page_faults",
    "timing_environment",
    "timing_order",
]

#: The ConvBN blocks' own modes.
MODE_CHOICES = tuple(m.value for m in Mode)
#: What a run measures unless told otherwise.
DEFAULT_MODES = (*MODE_CHOICES, "inplace-abn")
#: keep-folded: Tune as the other implementations compute it (PyTorch's efficient_conv_bn_eval pass, MMCV's
#: ConvModule(efficient_conv_bn_eval=True), the paper's code): the fold built from autograd operations in
#: every call, so the convolution keeps the folded weight for backward. For comparison only.
ALL_MODES = (*DEFAULT_MODES, "keep-folded", *PEER_MODES)

#: Environment variables that move CPU timings (OpenMP thread waiting, the C allocator); reports name the
#: ones set, so that runs can be compared.
TIMING_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "LD_PRELOAD",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_CONF",
)


@dataclass
class BenchmarkSettings:
    """What is measured: the backbone, the modes, the device and numerics, the timing protocol."""

    arch: str = "resnet50"
    modes: Sequence[str] = DEFAULT_MODES
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    num_classes: int = 200
    repeats: int = 5
    warmup: int = 2
    #: torch.compile's backend for the compiled modes ("inductor"; "aot_eager" traces and partitions the
    #: same graphs without generating code: quick, for tests, but PyTorch's pass is inductor's).
    compile_backend: str = "inductor"


@dataclass
class Result:
    """One mode at one (batch size, input size): its timed iterations and its memory."""

    mode: str
    batch_size: int
    input_size: int
    times: List[float] = field(default_factory=list)
    activation_bytes: int = 0
    peak_bytes: Optional[int] = None
    page_faults: List[int] = field(default_factory=list)
    #: The step's largest live total of saved tensors (see :class:`tllib_tune.utils.memory.PeakSavedMeter`).
    peak_saved_bytes: Optional[int] = None
    #: Compiled modes: seconds of the first iteration, which compiles forward and backward.
    first_s: Optional[float] = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def timing_order(modes: Sequence[str], repeats: int) -> List[str]:
    """The order of the timed iterations: ``repeats`` rounds, each running every mode once.

    The iteration run just before may move a mode's time (the caches, the allocator's state). Plain
    alternation (ABC CBA ...) is unfair there to the middle modes: the first and last follow themselves
    half the time, the others never. So, by construction rather than because the effect was measured (two
    runs here could not tell it from the noise: benchmarks/cpu-resnet50-fold/order), the rounds are the
    rows of a Williams design (the balanced Latin square of crossover trials): over every ``len(modes)``
    rounds (twice that for an odd count) each mode takes every place in the round equally often and,
    inside the rounds, follows every other mode equally often. For two modes it is ABBA.
    """
    count = len(modes)
    if count == 0:
        return []
    first = [0]  # 0, 1, n-1, 2, n-2, ...: the differences of neighbours take every value once
    low, high = 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    rows = [[(label + shift) % count for label in first] for shift in range(count)]
    if count % 2:  # an odd count needs the mirrored square too
        rows += [row[::-1] for row in rows]
    return [modes[label] for r in range(repeats) for label in rows[r % len(rows)]]


def minor_page_faults() -> Optional[int]:
    """Minor page faults of this process so far; None where the platform does not count them."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timing_environment() -> str:
    """The TIMING_ENV variables that are set, or a note that the defaults are in use."""
    found = [f"{k}={os.environ[k]}" for k in TIMING_ENV if os.environ.get(k)]
    return ", ".join(found) if found else "default OpenMP and allocator settings"


class Net(nn.Module):
    """Backbone + global pool + linear head: what a fine-tuning iteration trains."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(backbone.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(x)))


def _realistic_bn_(model: nn.Module, seed: int = 0) -> None:
    """Pretrained-like BN statistics, so deploy's fold and tune's scale are not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=gen))


def keep_folded_forward(block: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """A ConvBN block's eval-mode function computed as the other Tune implementations do: the fold
    s = gamma / sqrt(var + eps), W' = W * s, b' = beta + (b - mean) * s from autograd operations, then
    the convolution, which saves W' (a weight-sized tensor per block) for its backward."""
    conv, bn = block.conv, block.bn
    if not bn.affine:
        raise ValueError("keep-folded compares affine BatchNorm only")
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
    centred_bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    return conv._conv_forward(x, weight, bn.bias + centred_bias * scale)


class IterationBenchmark:
    """One model (plus an In-Place ABN copy if asked) and its optimizer; runs timed iterations."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        torch.manual_seed(0)
        base = Net(get_model(settings.arch, pretrained=False), settings.num_classes)
        _realistic_bn_(base)
        self.models: Dict[str, nn.Module] = {}
        if any(m not in ("inplace-abn", "compiled-pass") for m in settings.modes):
            self.models["convbn"] = base
        self._blocks = [m for m in base.modules() if isinstance(m, ConvBN)]
        self._override: Optional[str] = None  # "keep-folded" or "ckpt": a forward swapped in
        self.compiled: Dict[str, nn.Module] = {}
        self._graphs = 0
        if any("+" in m for m in settings.modes):
            backbone_stages(base.backbone)  # refuses an arch without stages before anything runs
        if "compiled-pass" in settings.modes:
            self.models["torchvision"] = torchvision_peer(settings.arch, base, settings.num_classes)
        if "inplace-abn" in settings.modes:
            from ..modules.inplace_abn import convert_to_inplace_abn

            abn = Net(get_model(settings.arch, pretrained=False), settings.num_classes)
            abn.load_state_dict(base.state_dict())
            convert_to_inplace_abn(abn.backbone)
            self.models["inplace-abn"] = abn
        self.optimizers = {}
        for key, model in self.models.items():
            model.to(self.device).train(key != "torchvision")  # torchvision's BN: running statistics
            if settings.channels_last:
                model.to(memory_format=torch.channels_last)
            self.optimizers[key] = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()
        self.amp_dtype = amp_dtype(settings.amp)

    def batch_statistics_problem(
        self,
        batch_sizes: Sequence[int],
        input_sizes: Sequence[int],
        *,
        batch_arg: str = "batch_size",
        input_arg: str = "input_size",
    ) -> Optional[str]:
        """Why a setting cannot run in a batch-statistics mode, or None (see
        :func:`tllib_tune.utils.feature_maps.batch_statistics_problem`); checked before anything is
        timed, so that a long run does not die late."""
        model = next(iter(self.models.values()))
        settings = self.settings
        return batch_statistics_problem(
            model, batch_sizes, input_sizes, settings.modes, name=settings.arch, batch_arg=batch_arg,
            input_arg=input_arg,
        )  # fmt: skip

    def model_for(self, mode: str) -> nn.Module:
        """The model that runs ``mode``, switched to it (the mode switch is not timed)."""
        key = _model_key(mode)
        if key != "convbn":
            return self.compiled[key] if mode in COMPILED_MODES else self.models[key]
        model = self.models["convbn"]
        self._swap_forward(model, "keep-folded" if mode == "keep-folded" else "ckpt" if "+" in mode else None)
        set_mode(model.backbone, "eval" if mode == "keep-folded" else base_mode(mode) or mode)
        return self.compiled["convbn"] if mode in COMPILED_MODES else model

    def _swap_forward(self, model: nn.Module, override: Optional[str]) -> None:
        """Keep-folded's block forward or checkpointed stages in place (``override``), or neither."""
        if override == self._override:
            return
        if self._override == "keep-folded":
            for block in self._blocks:
                del block.forward
        elif self._override == "ckpt":
            disable_grad_checkpointing(model.backbone)
        if override == "keep-folded":
            for block in self._blocks:  # an instance attribute, found before the class's forward
                block.forward = functools.partial(keep_folded_forward, block)
        elif override == "ckpt":
            enable_grad_checkpointing(model.backbone, use_reentrant=True)  # recomputes under the step's hooks
        self._override = override

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def iteration(
        self,
        mode: str,
        x: torch.Tensor,
        y: torch.Tensor,
        meter: Optional[SavedTensorMeter] = None,
        step_meter: Optional[PeakSavedMeter] = None,
    ) -> float:
        """One timed forward + backward + SGD step in ``mode`` (``meter`` counts the forward's saved
        tensors, ``step_meter`` those of the whole step); returns the seconds it took."""
        model = self.model_for(mode)
        optimizer = self.optimizers[_model_key(mode)]
        self._sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with step_meter or contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                with meter or contextlib.nullcontext():
                    logits = model(x)
                loss = self.loss_fn(logits.float(), y)
            loss.backward()
        optimizer.step()
        self._sync()
        return time.perf_counter() - start

    def batch(self, batch_size: int, input_size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Random images and labels on the device, the same for every mode."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, input_size, input_size, generator=gen).to(self.device)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, self.settings.num_classes, (batch_size,), generator=gen).to(self.device)
        return x, y

    def _memory(self, mode: str, x: torch.Tensor, y: torch.Tensor, result: Result) -> None:
        meter = SavedTensorMeter(exclude=[self.model_for(mode)])
        self.iteration(mode, x, y, meter)
        result.activation_bytes = meter.bytes
        peak = PeakSavedMeter(exclude=tuple(self.models.values()))
        self.iteration(mode, x, y, step_meter=peak)
        result.peak_saved_bytes = peak.peak
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.iteration(mode, x, y)
            result.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    def measure(self, batch_size: int, input_size: int, progress: Any) -> List[Result]:
        """Every mode at one setting: memory first, then warm-up and timed iterations, interleaved in
        :func:`timing_order`, so that drift and the mode run just before hit every mode alike.
        ``progress.update(1)`` is called after each warm-up or timed iteration."""
        settings = self.settings
        x, y = self.batch(batch_size, input_size, seed=batch_size * 1000 + input_size)
        results = {m: Result(m, batch_size, input_size) for m in settings.modes}
        self._compile(results, x, y, progress)
        for mode, result in results.items():
            self._memory(mode, x, y, result)
        for _ in range(settings.warmup):
            for mode in settings.modes:
                self.iteration(mode, x, y)
                progress.update(1)
        for mode in timing_order(settings.modes, settings.repeats):
            faults = minor_page_faults()
            results[mode].times.append(self.iteration(mode, x, y))
            if faults is not None:
                results[mode].page_faults.append(minor_page_faults() - faults)
            progress.update(1)
        self._check_no_recompile(results)
        return list(results.values())

    def compile(
        self, modes: Sequence[str], x: torch.Tensor, y: torch.Tensor, progress: Any = None
    ) -> Dict[str, float]:
        """Fresh compiled models for the compiled ones among ``modes``, each compiled by its first
        iteration on (x, y) under its own inductor settings (:func:`.peers.compile_settings`). Returns
        each compiled mode's first iteration in seconds (compiling included); ``progress.update(1)`` is
        called after each. Call it again for a new input shape."""
        compiled = [m for m in modes if m in COMPILED_MODES]
        if not compiled:
            return {}
        torch._dynamo.reset()
        backend = self.settings.compile_backend
        keys = {_model_key(m) for m in compiled}
        self.compiled = {k: torch.compile(self.models[k], dynamic=False, backend=backend) for k in keys}
        first = {}
        for mode in compiled:
            if mode != "compiled-pass":  # fill the blocks' lazily built caches first: no guard on them fails
                self.model_for(mode)
                with torch.no_grad():
                    self.models["convbn"](x)
            with compile_settings(mode):
                first[mode] = self.iteration(mode, x, y)
            if progress is not None:
                progress.update(1)
        self._graphs = _compiled_graphs()
        return first

    def _compile(self, results: Dict[str, Result], x: torch.Tensor, y: torch.Tensor, progress: Any) -> None:
        """:meth:`compile` for this setting's results: first iterations and notes on the pass."""
        for mode, seconds in self.compile(list(results), x, y, progress).items():
            results[mode].first_s = seconds
        settings = self.settings
        if "compiled-pass" in results and not pass_available():
            results["compiled-pass"].note = (
                f"torch {torch.__version__} lacks torch._inductor.config.efficient_conv_bn_eval_fx_passes: "
                "compiled-pass is torchvision's model compiled without PyTorch's pass"
            )
        elif "compiled-pass" in results and settings.compile_backend != "inductor":
            results["compiled-pass"].note = (
                f"backend {settings.compile_backend}: PyTorch's pass is inductor's, so compiled-pass ran "
                "without it"
            )

    def _check_no_recompile(self, results: Dict[str, Result]) -> None:
        """Note on the compiled modes if anything compiled again after their first iterations."""
        compiled = [m for m in results if m in COMPILED_MODES]
        if compiled and _compiled_graphs() != self._graphs:
            for mode in compiled:
                results[mode].note = (results[mode].note + "; " if results[mode].note else "") + (
                    "recompiled after its first iteration: its times include compiling"
                )


def _model_key(mode: str) -> str:
    """Which model (and optimizer) runs ``mode``: "convbn", "inplace-abn" or "torchvision"."""
    if mode == "inplace-abn":
        return mode
    return "torchvision" if mode == "compiled-pass" else "convbn"


def _compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process since its last reset."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
