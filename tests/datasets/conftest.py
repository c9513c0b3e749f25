"""Fixtures for the data-set tests: tiny trees in each official layout (builders live in trees.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import pytest

from .trees import make_aircraft, make_cars_devkit, make_cub


@pytest.fixture
def cub_root(tmp_path: Path) -> Tuple[Path, Dict[str, list]]:
    expected = make_cub(tmp_path / "CUB_200_2011")
    return tmp_path, expected


@pytest.fixture
def aircraft_root(tmp_path: Path) -> Tuple[Path, Dict[str, list]]:
    expected = make_aircraft(tmp_path / "fgvc-aircraft-2013b" / "data")
    return tmp_path, expected


@pytest.fixture
def cars_root(tmp_path: Path) -> Tuple[Path, Dict[str, list]]:
    expected = make_cars_devkit(tmp_path / "stanford_cars")
    return tmp_path, expected
