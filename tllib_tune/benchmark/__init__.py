"""The benchmark of one fine-tuning iteration per mode (the paper's Figure 3 / Appendix E) and the
op-by-op profile of two modes: :mod:`.measure` (the model, the iteration, interleaved timing and exact
activation memory), :mod:`.report` (table, targets, CSV, TensorBoard, PNG), :mod:`.pool` (several runs'
iterations as one, their spread), :mod:`.profile` (torch.profiler per operator), :mod:`.cli`
(``tllib-tune benchmark``, ``tllib-tune profile``, ``tllib-tune pool``)."""

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
from .report import fault_notes, format_table, format_targets, rows_for

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
    "read_rows",
    "pool_rows",
    "format_run_spread",
    "profile_modes",
    "format_report",
]
