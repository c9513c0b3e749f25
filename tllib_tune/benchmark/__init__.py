"""The benchmark of one fine-tuning iteration per mode (the paper's Figure 3 / Appendix E) and the
op-by-op profile of two modes: :mod:`.measure` (the model, the iteration, interleaved timing and exact
activation memory), :mod:`.report` (table, CSV, TensorBoard, PNG), :mod:`.targets` (the targets, with the
intervals of :mod:`.stats`), :mod:`.pool` (several runs' iterations as one, their spread), :mod:`.profile`
(torch.profiler per operator), :mod:`.cli` (``tllib-tune benchmark``, ``tllib-tune profile``,
``tllib-tune pool``)."""

from .measure import (
    ALL_MODES,
    DEFAULT_MODES,
    BenchmarkSettings,
    IterationBenchmark,
    Result,
    keep_folded_forward,
    timing_order,
)
from .pool import format_run_spread, pool_rows, read_rows
from .profile import format_report, profile_modes
from .report import fault_notes, format_table, rows_for, wait_policy_note
from .stats import ratio_interval, round_ratio_interval, round_ratios
from .targets import format_targets

__all__ = [
    "ALL_MODES",
    "DEFAULT_MODES",
    "BenchmarkSettings",
    "IterationBenchmark",
    "Result",
    "keep_folded_forward",
    "timing_order",
    "rows_for",
    "format_table",
    "format_targets",
    "fault_notes",
    "wait_policy_note",
    "ratio_interval",
    "round_ratios",
    "round_ratio_interval",
    "read_rows",
    "pool_rows",
    "format_run_spread",
    "profile_modes",
    "format_report",
]
