"""The ``tllib-tune`` entry point: subcommand dispatch, and the console script of a wheel installed into a
fresh virtual environment, run from another directory (where examples/, scripts/ and configs/ are absent).

The wheel is built and installed offline (``--no-deps --no-build-isolation``); the new environment sees
this one's packages (torch ...) through a .pth line, so nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tllib_tune import cli

REPO = Path(__file__).resolve().parents[1]


def test_dispatch_usage_and_unknown_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("finetune", "benchmark", "profile", "reproduce"))
    assert cli.main([]) == 2 and "usage: tllib-tune COMMAND" in capsys.readouterr().err
    assert cli.main(["finetnue"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "tllib-tune: error: unknown command 'finetnue'; did you mean finetune?"
    )


def test_a_subcommand_is_one_registration(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    cli.register("echo", "tests.test_cli:_echo", "print the arguments")
    assert cli.main(["echo", "a", "--b"]) == 7
    assert capsys.readouterr().out == "tllib-tune echo ['a', '--b']\n"


def test_every_registered_command_names_itself_in_its_errors(capsys):
    """Each subcommand's target imports and speaks as ``tllib-tune NAME`` (a bad flag: one line, exit 2)."""
    for name in cli.COMMANDS:
        try:
            status = cli.main([name, "--no-such-flag"])
        except SystemExit as exc:  # argparse's own exit is as good as a returned status
            status = exc.code
        assert status == 2, name
        err = capsys.readouterr().err
        assert f"tllib-tune {name}: error:" in err and "--no-such-flag" in err, (name, err)


def _echo(argv, prog):
    print(prog, argv)
    return 7


def _run(command, cwd, env, timeout=600):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment holding the wheel of this checkout; returns its bin/ folder."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a clean copy: the build leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("tllib_tune", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(source)], base, env
    )
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    target = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env
        ).stdout.strip()
    )
    (target / "_this_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # torch & co.
    wheel = next((base / "dist").glob("tllib_tune-*.whl"))
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], base, env)
    return venv / "bin"


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", **extra)  # as tests/conftest.py: tiny runs, no spin-waiting
    return env


def test_the_wheel_runs_the_quick_start_from_another_directory(installed, tmp_path):
    where = _run(
        [str(installed / "python"), "-c", "import tllib_tune; print(tllib_tune.__file__)"],
        tmp_path,
        _clean_env(),
    )
    assert where.stdout.strip().startswith(str(installed.parent))  # the wheel's copy, not this checkout
    # the quick start's own data set (generated once, as the quick start would) with a tiny run over it
    from tllib_tune.datasets import ensure_synthetic
    from tllib_tune.finetune import find_config, read_config_file

    options = read_config_file(find_config("quick_start"))["dataset_options"]["synthetic"]
    ensure_synthetic(tmp_path / "data" / "synthetic-quickstart", progress=False, **options)
    tiny = [
        "--epochs",
        "1",
        "-i",
        "2",
        "--mode-schedule",
        "train:0-1",
        "--input-size",
        "32",
        "--workers",
        "0",
    ]
    result = _run(
        [str(installed / "tllib-tune"), "finetune", "--quick-start", "--log", "runs/x", *tiny],
        tmp_path,
        _clean_env(),
    )
    assert "Quick start (offline)" in result.stdout and "final test acc1" in result.stdout
    summary = json.loads((tmp_path / "runs" / "x" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["args"]["config"] == "quick_start"
    assert summary["args"]["dataset"] == "synthetic" and summary["test_size"] == 1000  # 20 classes x 50
    assert (tmp_path / "runs" / "x" / "checkpoints" / "latest.pt").is_file()


def test_the_wheel_runs_the_benchmark(installed, tmp_path):
    flags = ["--arch", "resnet18", "--batch-sizes", "2", "--input-sizes", "32", "--modes", "eval,tune",
             "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-plot", "--out", "bench"]  # fmt: skip
    result = _run([str(installed / "tllib-tune"), "benchmark", *flags], tmp_path, _clean_env())
    assert "time/eval" in result.stdout
    with open(tmp_path / "bench" / "results.csv") as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"eval", "tune"} and float(rows["tune"]["memory_vs_eval"]) < 0.8
    bad = subprocess.run([str(installed / "tllib-tune"), "benchmark", "--arch", "resnet5"], cwd=tmp_path,
                         env=_clean_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert "tllib-tune benchmark: error: --arch: unknown model 'resnet5'" in bad.stderr
