"""The reproduction's outputs: Table 3 / Table 5 as Markdown and CSV, and Figure 2 as two PNGs.

* :func:`summarize_modes` / :func:`compare` -- per mode: top-1 mean and (sample) std over seeds,
  activation MiB, seconds per iteration; "tune vs train" and "inplace-abn vs train" as differences and
  savings, the way the paper's Table 3 and Table 5 lay them out.
* :func:`write_tables` -- ``table.md`` (also the tune-equals-eval, float64 and transfer checks),
  ``table.csv`` (the summary rows) and ``runs.csv`` (one row per run).
* :func:`scaling_coefficients`, :func:`plot_scaling`, :func:`plot_losses` -- Figure 2: the pretrained
  backbone's per-channel gamma / sqrt(running_var + eps), and the training losses of eval, tune, deploy.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor

from ..common import atomic_write
from ..modules.convbn import ConvBNBase
from .transfer import RunResult

__all__ = [
    "TABLE_COLUMNS",
    "RUN_COLUMNS",
    "summarize_modes",
    "compare",
    "write_tables",
    "scaling_coefficients",
    "plot_scaling",
    "plot_losses",
]

TABLE_COLUMNS = [
    "row", "acc1_mean", "acc1_std", "seeds", "diverged", "activation_mib", "s_per_it",
    "acc1_diff", "activation_saving_pct", "time_saving_pct",
]  # fmt: skip
RUN_COLUMNS = [
    "mode", "seed", "pretrained", "acc1", "train_loss", "activation_mib", "s_per_it", "seconds", "diverged",
]  # fmt: skip
COMPARISONS = (("tune", "train"), ("inplace-abn", "train"))


def _finite(values: Sequence[float]) -> List[float]:
    return [v for v in values if isinstance(v, float) and math.isfinite(v)]


def summarize_modes(runs: Sequence[RunResult], modes: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per mode (pretrained runs only): top-1 mean/std over seeds, activation MiB, s/it (medians)."""
    rows = {}
    for mode in modes:
        mine = [r for r in runs if r.mode == mode and r.pretrained]
        accs = _finite([r.acc1 for r in mine])
        times, memory = _finite([r.s_per_it for r in mine]), _finite([r.activation_mib for r in mine])
        rows[mode] = {
            "row": mode,
            "acc1_mean": statistics.mean(accs) if accs else float("nan"),
            "acc1_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "seeds": len(mine),
            "diverged": sum(r.diverged is not None for r in mine),
            "activation_mib": statistics.median(memory) if memory else float("nan"),
            "s_per_it": statistics.median(times) if times else float("nan"),
        }
    return rows


def compare(rows: Dict[str, Dict[str, Any]], mode: str, base: str) -> Dict[str, Any]:
    """``mode`` against ``base``: top-1 difference (points) and the memory and time saved (percent)."""
    m, b = rows[mode], rows[base]
    return {
        "row": f"{mode} vs {base}",
        "acc1_diff": m["acc1_mean"] - b["acc1_mean"],
        "activation_saving_pct": 100.0 * (1.0 - m["activation_mib"] / b["activation_mib"]),
        "time_saving_pct": 100.0 * (1.0 - m["s_per_it"] / b["s_per_it"]),
    }


def comparisons(rows: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [compare(rows, m, b) for m, b in COMPARISONS if m in rows and b in rows]


def fmt(value: Any, digits: int = 2, sign: bool = False) -> str:
    """A number for the tables: fixed digits, optionally signed; None, NaN and inf as "n/a"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def main_table(rows: Dict[str, Dict[str, Any]]) -> List[str]:
    """Markdown lines of the Table 3 / Table 5 layout."""
    lines = [
        "| mode | top-1 % (mean ± std) | activation MiB | s/it |",
        "|---|---|---|---|",
    ]
    for r in rows.values():
        acc = f"{fmt(r['acc1_mean'])} (± {fmt(r['acc1_std'])})"
        if r["diverged"]:
            acc += f", {r['diverged']} of {r['seeds']} runs diverged"
        lines.append(f"| {r['row']} | {acc} | {fmt(r['activation_mib'], 1)} | {fmt(r['s_per_it'], 3)} |")
    for c in comparisons(rows):
        m, b = c["row"].split(" vs ")
        mem = rows[m]["activation_mib"] - rows[b]["activation_mib"]
        sec = rows[m]["s_per_it"] - rows[b]["s_per_it"]
        lines.append(
            f"| **{c['row']}** | {fmt(c['acc1_diff'], sign=True)} | {fmt(mem, 1, True)} "
            f"({fmt(c['activation_saving_pct'], 1)} % saved) | {fmt(sec, 3, True)} "
            f"({fmt(c['time_saving_pct'], 1)} % saved) |"
        )
    return lines


def seed_table(runs: Sequence[Dict[str, Any]], modes: Sequence[str], seeds: Sequence[int]) -> List[str]:
    """Markdown lines of every run's top-1 (the paper's Appendix D layout); ``runs``: run rows."""
    lines = [
        "| mode | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for mode in modes:
        by_seed = {r["seed"]: r for r in runs if r["mode"] == mode and r["pretrained"]}
        cells = [fmt(by_seed[s]["acc1"]) if s in by_seed else "" for s in seeds]
        accs = _finite([r["acc1"] for r in by_seed.values()])
        spread = [
            fmt(statistics.mean(accs)) if accs else "n/a",
            fmt(statistics.stdev(accs)) if len(accs) > 1 else "n/a",
        ]
        lines.append(f"| {mode} | " + " | ".join(cells + spread) + " |")
    return lines


def equality_table(entries: Sequence[Dict[str, Any]]) -> List[str]:
    """Markdown lines: per seed, eval's and tune's top-1 and how far apart their float32 runs ended."""
    lines = [
        "| seed | eval top-1 | tune top-1 | difference | max abs parameter difference "
        "| max abs loss difference |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['seed']} | {fmt(e['eval_acc1'])} | {fmt(e['tune_acc1'])} "
            f"| {fmt(e['acc1_diff'], sign=True)} | {e['max_abs_param_diff']:.2e} "
            f"| {e['max_abs_loss_diff']:.2e} |"
        )
    return lines


def float64_table(check: Dict[str, Any]) -> List[str]:
    """Markdown lines of the float64 check's figures."""
    c = check
    return [
        "| figure | value |",
        "|---|---|",
        f"| steps x batch | {c['steps']} x {c['batch_size']} |",
        f"| tune vs eval: max abs parameter difference | {c['tune_vs_eval_max_abs_param_diff']:.2e} |",
        f"| tune vs eval: max abs loss difference | {c['tune_vs_eval_max_abs_loss_diff']:.2e} |",
        f"| deploy vs eval: backbone drift / backbone norm | {100 * c['deploy_drift_rel_params']:.3f} % |",
        f"| deploy vs eval: backbone drift / eval's update | {100 * c['deploy_drift_rel_update']:.1f} % |",
        f"| deploy vs eval: max abs parameter difference | {c['deploy_vs_eval_max_abs_param_diff']:.2e} |",
    ]


def _csv_text(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_tables(out: Path, summary: Dict[str, Any], runs: Sequence[RunResult], markdown: str) -> None:
    """``table.md`` (``markdown``), ``table.csv`` (modes, then comparisons) and ``runs.csv``."""
    rows = summary["modes"]
    write_text(out / "table.md", markdown)
    write_text(out / "table.csv", _csv_text(TABLE_COLUMNS, list(rows.values()) + comparisons(rows)))
    write_text(out / "runs.csv", _csv_text(RUN_COLUMNS, [r.row() for r in runs]))


def scaling_coefficients(model: torch.nn.Module) -> Tensor:
    """Every ConvBN channel's s = gamma / sqrt(running_var + eps) (float64), in model order."""
    values = []
    for block in model.modules():
        if isinstance(block, ConvBNBase):
            bn = block.bn
            gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_var.double())
            values.append(gamma / torch.sqrt(bn.running_var.double() + bn.eps))
    if not values:
        raise ValueError(f"{type(model).__name__} has no ConvBN blocks to read scaling coefficients from")
    return torch.cat(values)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(path: Path, coefficients: Tensor, title: str) -> Dict[str, float]:
    """Histogram of |s| on log axes (Figure 2, left); returns its min, max and median."""
    plt = _pyplot()
    mags = coefficients.abs().clamp_min(1e-12).numpy()
    low, high = float(mags.min()), float(mags.max())
    edges = torch.logspace(math.log10(low) - 0.05, math.log10(high) + 0.05, 41).numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.hist(mags, bins=edges, color="#4477aa", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|gamma| / sqrt(running_var + eps) per channel")
    ax.set_ylabel("channels")
    note = (
        f"{len(mags)} channels, {low:.3g} .. {high:.3g} ({high / low:.0f}x); deploy scales gradients by 1/s²"
    )
    ax.set_title(f"{title}\n{note}", fontsize=9)
    _save(fig, path)
    return {"min": low, "max": high, "median": float(statistics.median(mags.tolist())), "channels": len(mags)}


def plot_losses(
    path: Path, runs: Sequence[RunResult], modes: Sequence[str] = ("eval", "tune", "deploy")
) -> None:
    """Training loss per step, mean over seeds (Figure 2, right), and |tune - eval| per step and seed."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=110)
    styles = {"eval": ("#4477aa", "-", 2.5), "tune": ("#ee6677", "--", 1.5), "deploy": ("#228833", "-", 1.5)}
    for mode in modes:
        curves = [r.losses for r in runs if r.mode == mode and r.pretrained and r.losses]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        color, dash, width = styles.get(mode, ("#777777", "-", 1.0))
        left.plot(
            range(1, n + 1), mean, dash, color=color, linewidth=width, label=f"{mode} ({len(curves)} seeds)"
        )
    left.set_xlabel("step")
    left.set_ylabel("training loss (mean over seeds)")
    left.legend(fontsize=8)
    _plot_tune_eval_gap(right, runs)
    _save(fig, path)


def _plot_tune_eval_gap(ax: Any, runs: Sequence[RunResult]) -> None:
    evals = {r.seed: r.losses for r in runs if r.mode == "eval" and r.pretrained}
    for r in runs:
        if r.mode == "tune" and r.pretrained and r.seed in evals:
            gap = [max(abs(a - b), 1e-12) for a, b in zip(r.losses, evals[r.seed])]
            ax.plot(range(1, len(gap) + 1), gap, ".", markersize=4, label=f"seed {r.seed}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("|loss(tune) - loss(eval)| (float32; 1e-12 = equal)")
    ax.set_title("tune vs eval: round-off only", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def _header(summary: Dict[str, Any]) -> List[str]:
    s, pre, machine = summary["settings"], summary["pretrain"], summary["machine"]
    seeds = ", ".join(str(x) for x in summary["seeds"])
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in summary["wall_s"].items() if k != "total")
    return [
        f"# Reproducing the paper offline: {s['arch']}, synthetic source set -> synthetic target set",
        "",
        f"Settings: {'--fast' if summary['fast'] else 'defaults'}; {s['arch']} at {s['input_size']} px, "
        f"pretrained in train mode on {pre['source_classes']} source classes "
        f"({pre['source_train_images']} images, source test top-1 {fmt(pre['source_test_acc1'])} %); "
        f"fine-tuned on {summary['target_classes']} new target classes ({summary['target_train_images']} "
        f"training / {summary['target_test_images']} test images) for {s['epochs']} x "
        f"{s['iters_per_epoch']} steps of batch {s['batch_size']}, lr {s['lr']} (backbone 0.1x), "
        f"seeds {seeds}.",
        f"Machine: {machine['threads']} threads, load average {machine['load_before']} before and "
        f"{machine['load_after']} after; wall time {summary['wall_s']['total']:.0f} s ({phases}); the "
        f"pretraining itself took {pre['seconds']:.0f} s with {pre['threads']} thread(s)"
        f"{' (read from the cache in this run)' if pre.get('cached') else ''}.",
        "Activation MiB: bytes saved for backward in one iteration (exact, machine-independent); "
        "s/it: median over the run's steps (shared machine: noisy).",
        "",
    ]


def render_markdown(summary: Dict[str, Any]) -> str:
    """The whole ``table.md``: Table 3 / Table 5, per-seed top-1, tune == eval, float64, transfer check."""
    rows, transfer = summary["modes"], summary["transfer"]
    lines = _header(summary) + ["## Table 3 / Table 5 layout", ""] + main_table(rows)
    lines += ["", "## Top-1 per seed (Appendix D layout)", ""]
    lines += seed_table(summary["runs"], list(rows), summary["seeds"])
    if summary["tune_vs_eval"]:
        lines += ["", "## Tune equals Eval (float32 fine-tuning runs, same seed)", ""]
        lines += equality_table(summary["tune_vs_eval"])
    lines += ["", "## Float64 check (eval, tune, deploy from the pretrained backbone)", ""]
    lines += float64_table(summary["float64"])
    lines += [
        "",
        "## Transfer check (train mode, seed " + str(transfer["seed"]) + ")",
        "",
        "| backbone | target top-1 |",
        "|---|---|",
        f"| source-pretrained | {fmt(transfer['pretrained_acc1'])} |",
        f"| random initialisation | {fmt(transfer['scratch_acc1'])} |",
        f"| chance | {fmt(transfer['chance_acc1'])} |",
        "",
        "## Figure 2",
        "",
        f"![scaling coefficients]({summary['figures']['scaling']})",
        f"![training loss]({summary['figures']['loss']})",
        "",
    ]
    return "\n".join(lines)
