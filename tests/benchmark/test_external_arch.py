"""The benchmark reaches any model: ``--arch torchvision/...`` converts it and measures every mode (issue 16).

In-process through :func:`tllib_tune.benchmark.cli.main`, one tiny setting; the saved bytes are exact, so
the ratios are asserted."""

from __future__ import annotations

import csv

from tllib_tune.benchmark.cli import main


def test_torchvision_model_is_benchmarked_with_tune_keeping_deploys_memory(tmp_path, capsys):
    argv = ["--arch", "torchvision/mobilenet_v3_small", "--batch-sizes", "2", "--input-sizes", "64",
            "--modes", "eval,tune,deploy", "--repeats", "1", "--warmup", "0", "--device", "cpu",
            "--no-plot", "--out", str(tmp_path / "bench")]  # fmt: skip
    assert main(argv) == 0
    assert "torchvision/mobilenet_v3_small" in capsys.readouterr().out
    with open(tmp_path / "bench" / "results.csv") as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"eval", "tune", "deploy"}
    assert float(rows["tune"]["memory_vs_deploy"]) <= 1.01
    assert float(rows["tune"]["memory_vs_eval"]) < 0.8
