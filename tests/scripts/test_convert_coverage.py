"""scripts/convert_coverage.py: per family, the BatchNorms convert_convbn converts, and why others stay."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.models.conftest import _single_thread  # noqa: F401  (autouse: one thread per test)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("convert_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_counts_converted_and_left_per_family(coverage, tmp_path, capsys):
    out = tmp_path / "coverage.md"
    models = [
        "torchvision/resnet18",
        "torchvision/resnet34",
        "torchvision/densenet121",
        "torchvision/alexnet",
    ]
    assert coverage.main(["--models", *models, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = printed.splitlines()
    assert rows[2] == "| torchvision/resnet | 2 | 56 / 56 | none |"  # 20 + 36, every one converted
    concat = "it follows a concat (CatBackward0), not a convolution or Linear"
    assert rows[3] == f"| torchvision/densenet | 1 | 59 / 121 | {concat} (62) |"
    assert rows[4] == "| **all** | 3 | **115 / 177** | |" and len(rows) == 5  # alexnet has no BatchNorm


def test_families_group_torchvision_names_and_keep_timm_models_apart(coverage):
    assert coverage.family("torchvision/regnet_y_128gf") == "torchvision/regnet_y"
    assert coverage.family("torchvision/wide_resnet50_2") == "torchvision/wide_resnet"
    assert coverage.family("torchvision/vgg16_bn") == "torchvision/vgg_bn"
    assert coverage.family("torchvision/efficientnet_v2_s") == "torchvision/efficientnet_v2"
    assert coverage.family("timm/resnet18d") == "timm/resnet18d"


@pytest.mark.parametrize(
    "name, hint",
    [
        ("torchvision/resnet81", "did you mean torchvision/resnet18"),
        ("timm/resnet18e", "did you mean resnet18"),
    ],
)
def test_unknown_model_exits_with_one_line_and_a_hint(coverage, capsys, name, hint):
    with pytest.raises(SystemExit) as exit_info:
        coverage.main(["--models", name])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"convert_coverage.py: error: --models '{name}'") and hint in error
