"""Shared fixtures: the project root and its parameters (tests run from any directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def params() -> dict:
    from cxrbench import config

    return config.load_params(ROOT / "params.yaml")
