"""`phase` analysis: per-class accuracy and a confusion summary of a checkpoint, written to the run.

    <log>/analysis/per_class.csv    label, class, images, correct, acc1, most often predicted instead
    <log>/analysis/confusion.csv    the confusion matrix: a row per true class, a column per prediction
    <log>/analysis/summary.json     acc1, mean per-class acc1, the worst classes, the most confused pairs

Every file is written atomically. :func:`write_analysis` returns the figures and the lines to show.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import Tensor

from ..common import atomic_write
from ..utils.logger import write_json_atomic

__all__ = ["class_table", "confused_pairs", "write_analysis"]


def class_table(confusion: Tensor, classes: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per class: its test images, how many were right, acc1 (None without images) and the class
    it was most often mistaken for."""
    rows = []
    for label, name in enumerate(classes):
        counts = confusion[label].tolist()
        images, correct = int(sum(counts)), int(counts[label])
        wrong = [(c, other) for other, c in enumerate(counts) if other != label and c > 0]
        count, other = max(wrong) if wrong else (0, None)
        rows.append({
            "label": label, "class": name, "images": images, "correct": correct,
            "acc1": 100.0 * correct / images if images else None,
            "confused_with": classes[other] if other is not None else "", "confused_count": int(count),
        })  # fmt: skip
    return rows


def confused_pairs(confusion: Tensor, classes: Sequence[str], top: int = 10) -> List[Dict[str, Any]]:
    """The ``top`` (true, predicted) pairs of different classes with the most images."""
    pairs = [
        (int(confusion[t, p]), t, p)
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and confusion[t, p] > 0
    ]
    pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [{"true": classes[t], "predicted": classes[p], "images": n} for n, t, p in pairs[:top]]


def _csv(rows: List[List[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_analysis(
    folder: Path,
    confusion: Tensor,
    classes: Sequence[str],
    *,
    checkpoint: Optional[str],
    enabled: bool = True,
) -> Dict[str, Any]:
    """Write the three files into ``folder`` (when ``enabled``: the main process) and return the figures
    (``test_acc1``, ``mean_class_acc1``, ``analysis_dir``) with ``lines`` to show."""
    table = class_table(confusion, classes)
    pairs = confused_pairs(confusion, classes)
    images = int(confusion.sum())
    per_class = [row["acc1"] for row in table if row["acc1"] is not None]
    acc1 = 100.0 * float(confusion.diagonal().sum()) / images if images else float("nan")
    mean = sum(per_class) / len(per_class) if per_class else float("nan")
    worst = sorted((r for r in table if r["acc1"] is not None), key=lambda r: (r["acc1"], r["label"]))[:5]
    summary = {
        "checkpoint": checkpoint, "images": images, "classes": len(classes), "test_acc1": acc1,
        "mean_class_acc1": mean, "worst_classes": worst, "most_confused": pairs,
    }  # fmt: skip
    if enabled:
        keys = ["label", "class", "images", "correct", "acc1", "confused_with", "confused_count"]
        with atomic_write(folder / "per_class.csv", "w", encoding="utf-8") as f:
            f.write(_csv([keys] + [[row[k] if row[k] is not None else "" for k in keys] for row in table]))
        matrix = [["true \\ predicted", *classes]] + [
            [name, *confusion[i].tolist()] for i, name in enumerate(classes)
        ]
        with atomic_write(folder / "confusion.csv", "w", encoding="utf-8") as f:
            f.write(_csv(matrix))
        write_json_atomic(folder / "summary.json", summary)
    lines = [
        f"analysis: acc1 {acc1:.2f}% over {images} images, mean per-class acc1 {mean:.2f}% ({len(per_class)} "
        f"classes); per_class.csv, confusion.csv and summary.json in {folder}",
        "worst classes: "
        + ", ".join(f"{r['class']} {r['acc1']:.1f}% ({r['correct']}/{r['images']})" for r in worst),
    ]
    if pairs:
        shown = ", ".join(f"{p['true']} -> {p['predicted']} ({p['images']})" for p in pairs[:5])
        lines.append(f"most confused (true -> predicted, images): {shown}")
    return {"test_acc1": acc1, "mean_class_acc1": mean, "analysis_dir": str(folder), "lines": lines}
