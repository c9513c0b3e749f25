"""The whole reproduction, phase by phase: pretrain (or reuse), fine-tune every mode and seed, check, write.

:func:`run_experiment` returns the summary it also writes as ``summary.json``; the tables and figures
are rendered from it (:mod:`tllib_tune.paper.report`). Arguments are checked here in library terms;
the command line (:mod:`tllib_tune.paper.cli`) turns flags into them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from ..common import suggest
from ..utils.logger import write_json_atomic
from . import report
from .data import load_sets
from .float64 import float64_check
from .pretrain import pretrained_backbone
from .progress import Progress
from .settings import MODES, Settings
from .transfer import RunResult, finetune, max_abs_difference

__all__ = ["run_experiment", "check_modes", "check_seeds", "FIGURES"]

FIGURES = {"scaling": "figure2_scaling_coefficients.png", "loss": "figure2_training_loss.png"}


def check_modes(modes: Sequence[str]) -> List[str]:
    """The modes, validated: known names, no repeats, at least one."""
    modes = list(modes)
    if not modes:
        raise ValueError(f"modes is empty; choose from {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; {suggest(mode, MODES, n=1)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes repeat a mode ({', '.join(modes)}); give each mode once")
    return modes


def check_seeds(seeds: Sequence[int]) -> List[int]:
    """The seeds, validated: non-negative ints, no repeats, at least one."""
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be one or more non-negative integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat a seed ({', '.join(map(str, seeds))}); give each seed once")
    return seeds


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe(run: RunResult) -> str:
    """One line on a finished run."""
    text = (
        f"{run.mode} seed {run.seed}: top-1 {report.fmt(run.acc1)} %, {run.activation_mib:.1f} MiB saved "
        f"for backward, {run.s_per_it:.3f} s/it ({run.seconds:.0f} s)"
    )
    return text + (f"; diverged: {run.diverged}" if run.diverged else "")


def _equality(eval_run: RunResult, tune_run: RunResult) -> Dict[str, Any]:
    assert eval_run.state is not None and tune_run.state is not None
    return {
        "seed": eval_run.seed,
        "eval_acc1": eval_run.acc1,
        "tune_acc1": tune_run.acc1,
        "acc1_diff": tune_run.acc1 - eval_run.acc1,
        "max_abs_param_diff": max_abs_difference(tune_run.state, eval_run.state),
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(tune_run.losses, eval_run.losses)),
    }


def _finetune_grid(
    settings: Settings,
    sets: Dict[str, Any],
    state: Dict[str, Tensor],
    seeds: Sequence[int],
    modes: Sequence[str],
    progress: Progress,
) -> Tuple[List[RunResult], List[Dict[str, Any]]]:
    """Every (seed, mode) run, modes interleaved within each seed; plus tune-vs-eval per seed."""
    runs, equality = [], []
    total = len(seeds) * len(modes) * settings.epochs * settings.iters_per_epoch
    with progress.phase(f"fine-tuning {len(modes)} modes x {len(seeds)} seeds", total) as step:
        for seed in seeds:
            done: Dict[str, RunResult] = {}
            for mode in modes:
                run = finetune(
                    settings, sets, state, mode, seed, step=step, keep_state=mode in ("eval", "tune")
                )
                done[mode] = run
                runs.append(run)
                progress.say(describe(run))
            if "eval" in done and "tune" in done:
                equality.append(_equality(done["eval"], done["tune"]))
            for run in done.values():
                run.state = None
    return runs, equality


def _scratch(settings: Settings, sets: Dict[str, Any], seed: int, progress: Progress) -> RunResult:
    with progress.phase(
        "transfer check: train mode from random weights", settings.epochs * settings.iters_per_epoch
    ) as step:
        run = finetune(settings, sets, None, "train", seed, step=step)
    progress.say(f"from scratch (seed {seed}): target top-1 {report.fmt(run.acc1)} %")
    return run


def _figures(
    out: Path, settings: Settings, state: Dict[str, Tensor], runs: Sequence[RunResult]
) -> Dict[str, Any]:
    from ..models import get_model

    backbone = get_model(settings.arch)
    backbone.load_state_dict(state)
    title = f"Figure 2: scaling coefficients of the source-pretrained {settings.arch}"
    stats = report.plot_scaling(out / FIGURES["scaling"], report.scaling_coefficients(backbone), title)
    report.plot_losses(out / FIGURES["loss"], runs)
    return stats


class _Clock:
    """Wall time per phase: ``lap(name)`` closes the phase that began at the previous lap."""

    def __init__(self) -> None:
        self.wall: Dict[str, float] = {}
        self._start = self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.wall[name] = now - self._mark
        self._mark = now

    def finish(self) -> Dict[str, float]:
        self.wall["total"] = time.perf_counter() - self._start
        return self.wall


def _float64(
    settings: Settings, sets: Dict[str, Any], state: Dict[str, Tensor], seed: int, progress: Progress
) -> Dict[str, Any]:
    """The float64 check, announced and reported in the progress lines."""
    progress.say(f"float64 check: {settings.float64_steps} SGD steps of eval, tune and deploy")
    check = float64_check(settings, sets, state, seed=seed)
    progress.say(
        f"float64: tune vs eval max parameter difference {check['tune_vs_eval_max_abs_param_diff']:.2e}; "
        f"deploy drift {100 * check['deploy_drift_rel_params']:.3f} % of the backbone's norm"
    )
    return check


def _summary(
    settings: Settings, modes: Sequence[str], seeds: Sequence[int], sets: Dict[str, Any],
    runs: List[RunResult], scratch: RunResult, **parts: Any,
) -> Dict[str, Any]:  # fmt: skip
    """The JSON-able summary the tables are rendered from; ``parts`` are added as they are."""
    rows = report.summarize_modes(runs, modes)
    base = next((r for r in runs if r.mode == "train" and r.seed == seeds[0]), None)
    return {
        "settings": settings.to_dict(),
        "seeds": list(seeds),
        "modes": rows,
        "comparisons": report.comparisons(rows),
        "transfer": {
            "seed": seeds[0],
            "pretrained_acc1": base.acc1 if base is not None else float("nan"),
            "scratch_acc1": scratch.acc1,
            "chance_acc1": 100.0 / sets["num_classes"],
        },
        "target_classes": sets["num_classes"],
        "target_train_images": len(sets["train"]),
        "target_test_images": len(sets["test"]),
        "figures": dict(FIGURES),
        "runs": [r.row() for r in runs] + [scratch.row()],
        "losses": {f"{r.mode}/seed{r.seed}": r.losses for r in runs},
        **parts,
    }


def run_experiment(
    settings: Settings,
    *,
    out: Path,
    data_dir: Path,
    seeds: Sequence[int] = (0, 1, 2),
    modes: Sequence[str] = MODES,
    progress: Progress,
    fast: bool = False,
) -> Dict[str, Any]:
    """Run everything and write ``table.md``, ``table.csv``, ``runs.csv``, ``summary.json`` and the two
    Figure 2 PNGs into ``out``; returns the summary. ``fast`` only labels the outputs."""
    seeds, modes = check_seeds(seeds), check_modes(modes)
    out, data_dir = Path(out), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock, load_before = _Clock(), _load()
    progress.say(f"{torch.get_num_threads()} threads, load average {load_before}; outputs in {out}")
    state, pre_info, cache = pretrained_backbone(settings, data_dir, progress)
    clock.lap("pretrain")
    sets = load_sets(settings, data_dir, "target", progress=progress.tty)
    runs, equality = _finetune_grid(settings, sets, state, seeds, modes, progress)
    clock.lap("fine-tune")
    scratch = _scratch(settings, sets, seeds[0], progress)
    clock.lap("scratch")
    check = _float64(settings, sets, state, seeds[0], progress)
    clock.lap("float64")
    scaling = _figures(out, settings, state, runs)
    clock.lap("figures")
    machine = {"threads": torch.get_num_threads(), "load_before": load_before, "load_after": _load()}
    summary = _summary(
        settings, modes, seeds, sets, runs, scratch, fast=fast, tune_vs_eval=equality, float64=check,
        pretrain={**pre_info, "cache": str(cache)}, scaling_coefficients=scaling, machine=machine,
        wall_s=clock.finish(),
    )  # fmt: skip
    report.write_tables(out, summary, list(runs) + [scratch], report.render_markdown(summary))
    write_json_atomic(out / "summary.json", summary)
    progress.say(f"done in {summary['wall_s']['total']:.0f} s: {out / 'table.md'}")
    return summary
