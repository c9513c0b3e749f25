"""The benchmark's peers (tllib_tune.benchmark.peers, .checkpointing): the new modes in one tiny run,
torchvision's model computing ours, checkpointed stages, the step's peak of saved tensors."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.benchmark.test_benchmark import _run
from tests.conftest import rel_err
from tllib_tune import set_mode
from tllib_tune.benchmark import peers
from tllib_tune.benchmark.measure import Net, _realistic_bn_
from tllib_tune.models import get_model

PEERS = "eval,tune,deploy,compiled-pass,compiled-eval,compiled-tune,compiled-deploy,eval+ckpt,tune+ckpt"


def test_the_peer_modes_run_in_one_tiny_run(tmp_path):
    """Every new mode runs and is reported; compiled with aot_eager (dynamo, AOTAutograd and its
    partitioner, no code generation) to stay quick: tests/modules/test_tune_compiled.py runs inductor."""
    out = tmp_path / "bench"
    proc = _run(
        "--arch", "resnet18", "--settings", "2x32", "--modes", PEERS, "--repeats", "1", "--warmup", "0",
        "--device", "cpu", "--threads", "1", "--compile-backend", "aot_eager", "--no-plot", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv") as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(PEERS.split(","))
    mb = {m: float(r["activation_mb"]) for m, r in rows.items()}
    peak = {m: float(r["peak_saved_mb"]) for m, r in rows.items()}
    assert mb["compiled-tune"] <= 1.01 * mb["compiled-deploy"]  # the fold is recomputed, not kept
    assert mb["tune+ckpt"] < mb["tune"] and mb["eval+ckpt"] < mb["eval"]
    assert peak["tune+ckpt"] < peak["eval+ckpt"] and peak["tune+ckpt"] > mb["tune+ckpt"]  # recomputation
    for mode in peers.COMPILED_MODES:
        assert float(rows[mode]["compile_s"]) >= 0 and float(rows[mode]["median_s"]) > 0
    assert rows["eval"]["compile_s"] == ""
    assert "ran without it" in rows["compiled-pass"]["note"]  # aot_eager: the pass is inductor's
    assert "memory c-tune/c-deploy <= 1.01" in proc.stdout and "peak tune+ckpt/eval+ckpt" in proc.stdout


def test_torchvision_peer_computes_what_our_eval_mode_computes():
    torch.manual_seed(0)
    ours = Net(get_model("resnet18", pretrained=False), num_classes=7).double()
    _realistic_bn_(ours)
    peer = peers.torchvision_peer("resnet18", ours, num_classes=7).double()
    assert not peer.training
    set_mode(ours.backbone, "eval")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert rel_err(peer(x), ours(x)) < 1e-12
    with pytest.raises(ValueError, match="leave compiled-pass out"):
        peers.torchvision_peer("timm/resnet18", ours, num_classes=7)


def test_compile_problem_names_the_missing_compiler(monkeypatch):
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    assert "C++ compiler" in peers.compile_problem("cpu")
    assert peers.compile_problem("meta") is None
    assert [peers.base_mode(m) for m in ("compiled-pass", "compiled-tune", "tune+ckpt")] == [
        None,
        "tune",
        "tune",
    ]
