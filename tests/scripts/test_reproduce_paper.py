"""scripts/reproduce_paper.py and tllib_tune.paper: a --fast run's outputs and claims, the pretrained-backbone
cache, the table arithmetic (checked on the paper's own Appendix D numbers) and the command-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tllib_tune.paper import DEFAULT, FAST, MODES, main, settings_checksum
from tllib_tune.paper import pretrain as pretrain_module
from tllib_tune.paper.progress import Progress
from tllib_tune.paper.report import compare, summarize_modes
from tllib_tune.paper.transfer import RunResult

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce_paper.py"


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One ``--fast`` run of the script (not on a terminal: plain progress lines), shared by the tests."""
    base = tmp_path_factory.mktemp("reproduce")
    out, data = base / "out", base / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--fast", "--threads", "1", "--out", str(out), "--data", str(data)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, data, done


def _csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fast_run_writes_the_table_the_csvs_and_the_figures(fast_run):
    out, _, _ = fast_run
    table = (out / "table.md").read_text()
    for row in (*MODES, "**tune vs train**", "**inplace-abn vs train**"):
        assert f"| {row} |" in table
    rows = {r["row"]: r for r in _csv(out / "table.csv")}
    assert list(rows) == [*MODES, "tune vs train", "inplace-abn vs train"]
    for mode in MODES:
        assert 0.0 <= float(rows[mode]["acc1_mean"]) <= 100.0 and float(rows[mode]["acc1_std"]) >= 0.0
        assert rows[mode]["seeds"] == "3" and float(rows[mode]["activation_mib"]) > 0
        assert float(rows[mode]["s_per_it"]) > 0
    saving = 100 * (1 - float(rows["tune"]["activation_mib"]) / float(rows["train"]["activation_mib"]))
    assert float(rows["tune vs train"]["activation_saving_pct"]) == pytest.approx(saving)
    runs = _csv(out / "runs.csv")
    assert len(runs) == 3 * len(MODES) + 1  # every (mode, seed) and the from-scratch run
    assert [r["pretrained"] for r in runs].count("False") == 1
    for name in ("figure2_scaling_coefficients.png", "figure2_training_loss.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400
        assert (out / name).stat().st_size < 400_000
        assert f"]({name})" in table


def test_fast_run_tune_equals_eval_in_float64_and_has_deploys_memory(fast_run):
    out, _, _ = fast_run
    summary = json.loads((out / "summary.json").read_text())
    check = summary["float64"]
    assert check["tune_vs_eval_max_abs_param_diff"] < 1e-10
    assert check["tune_vs_eval_max_abs_loss_diff"] < 1e-10
    # not vacuous: the same steps in deploy mode really leave eval's trajectory
    assert check["deploy_vs_eval_max_abs_param_diff"] > 1e-6 and check["deploy_drift_rel_update"] > 1e-3
    assert f"{check['tune_vs_eval_max_abs_param_diff']:.2e}" in (out / "table.md").read_text()
    # float32 fine-tuning: tune and eval end together, seed by seed
    assert [e["seed"] for e in summary["tune_vs_eval"]] == [0, 1, 2]
    for entry in summary["tune_vs_eval"]:
        assert entry["max_abs_param_diff"] < 1e-3
    memory = {mode: row["activation_mib"] for mode, row in summary["modes"].items()}
    assert memory["tune"] == memory["deploy"]  # exact: the same tensors are saved
    assert memory["tune"] < 0.7 * memory["eval"] and memory["inplace-abn"] < memory["train"]


def test_fast_run_progress_is_plain_lines_and_logged(fast_run):
    out, data, done = fast_run
    assert "\r" not in done.stdout and done.stderr.strip() == ""
    lines = done.stdout.strip().splitlines()
    assert lines and all(line.startswith("[") and line[3] == ":" for line in lines)
    assert "pretraining resnet18" in done.stdout and "fine-tuning 5 modes x 3 seeds" in done.stdout
    log = (out / "reproduce.log").read_text()
    assert log.splitlines() == lines
    # the pretrained backbone is cached in --data, named by the checksum of its settings
    cache = pretrain_module.cache_path(FAST, data)
    assert cache.is_file() and cache.parent == data / "pretrained"
    assert json.loads(cache.with_suffix(".json").read_text())["identity"] == FAST.pretrain_identity()


# --- the pretrained-backbone cache ---------------------------------------------------------------------


def test_settings_checksum_follows_exactly_the_pretraining_settings(tmp_path):
    assert settings_checksum({"a": 1, "b": [1, 2]}) == settings_checksum({"b": [1, 2], "a": 1})
    assert settings_checksum({"a": 1}) != settings_checksum({"a": 2})
    path = pretrain_module.cache_path(DEFAULT, tmp_path)
    assert path != pretrain_module.cache_path(FAST, tmp_path)
    for change in (
        dict(pretrain_lr=0.1),
        dict(source_classes=20),
        dict(input_size=48),
        dict(pretrain_seed=1),
    ):
        assert pretrain_module.cache_path(dataclasses.replace(DEFAULT, **change), tmp_path) != path
    for change in (dict(lr=0.1), dict(epochs=9), dict(target_classes=10), dict(float64_steps=2)):
        assert pretrain_module.cache_path(dataclasses.replace(DEFAULT, **change), tmp_path) == path


def test_cache_is_reused_and_regenerated_when_missing_torn_or_changed(tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(settings, data_dir, progress):  # stands in for minutes of training
        calls.append(settings)
        return {"w": torch.full((3,), float(len(calls)))}, {"source_test_acc1": 50.0, "source_classes": 2,
                                                             "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    progress = Progress(None, stream=open(os.devnull, "w"))
    state, info, path = pretrain_module.pretrained_backbone(FAST, tmp_path, progress)
    assert len(calls) == 1 and not info["cached"] and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name, path.name]
    state, info, _ = pretrain_module.pretrained_backbone(FAST, tmp_path, progress)
    assert len(calls) == 1 and info["cached"] and torch.equal(state["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:20])  # torn
    state, _, _ = pretrain_module.pretrained_backbone(FAST, tmp_path, progress)
    assert len(calls) == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    path.unlink()  # missing
    pretrain_module.pretrained_backbone(FAST, tmp_path, progress)
    assert len(calls) == 3
    other = dataclasses.replace(FAST, pretrain_iters_per_epoch=16)  # changed settings: another file
    _, _, other_path = pretrain_module.pretrained_backbone(other, tmp_path, progress)
    assert len(calls) == 4 and other_path != path and path.is_file()
    # a file at the right name but made with other settings is not trusted
    other_path.replace(path)
    pretrain_module.pretrained_backbone(FAST, tmp_path, progress)
    assert len(calls) == 5


# --- the table: the paper's Table 3 from its Appendix D raw numbers --------------------------------------


def _run(mode: str, seed: int, acc1: float, memory: float, seconds: float) -> RunResult:
    return RunResult(mode=mode, seed=seed, pretrained=True, acc1=acc1, train_loss=0.0, activation_mib=memory,
                     s_per_it=seconds, seconds=1.0)  # fmt: skip


def test_table_arithmetic_reproduces_the_papers_table3_cub_row():
    """Appendix D: CUB-200 train 83.20/83.10/82.90, tune 83.20 x 3; memory 19.967 -> 12.323 GB, time
    0.571 -> 0.501 s/it. Table 3 prints 83.07 (0.15), 83.20 (0.00), 38.28 % and 12.26 % saved."""
    runs = [_run("train", s, a, 19.967, 0.571) for s, a in enumerate((83.20, 83.10, 82.90))]
    runs += [_run("tune", s, 83.20, 12.323, 0.501) for s in range(3)]
    rows = summarize_modes(runs, ["train", "tune"])
    assert round(rows["train"]["acc1_mean"], 2) == 83.07 and round(rows["train"]["acc1_std"], 2) == 0.15
    assert round(rows["tune"]["acc1_mean"], 2) == 83.20 and rows["tune"]["acc1_std"] == 0.0
    row = compare(rows, "tune", "train")
    assert round(row["activation_saving_pct"], 2) == 38.28 and round(row["time_saving_pct"], 2) == 12.26
    assert round(row["acc1_diff"], 2) == 0.13


# --- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--seeds", "a,1"], "--seeds 'a,1'"),
        (["--seeds", "0,0"], "repeat a seed (0, 0); give each seed once"),
        (["--seeds", ""], "--seeds ''"),
        (["--modes", "tune,tun"], "did you mean tune"),
        (["--modes", "eval,eval"], "repeat a mode"),
        (["--threads", "0"], "--threads '0'"),
        (["--threads", "two"], "--threads 'two'"),
        (["--fats"], "unrecognized arguments: --fats"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, names, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert names in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert main(["--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and len(err.strip().splitlines()) == 1


def test_busy_machine_hint(monkeypatch):
    from tllib_tune.paper import cli

    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    assert "--threads 1 is usually much faster than --threads 2" in cli.busy_machine_hint(2)
    assert cli.busy_machine_hint(1) is None
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert cli.busy_machine_hint(2) is None
