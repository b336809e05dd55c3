"""Shared fixtures: the project root and its parameters (tests run from any directory)."""

from __future__ import annotations

import time
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


@pytest.fixture
def timed():
    """``timed(fn, times)``: ``fn`` wrapped so that each call appends its wall time to ``times`` (the benchmarks time
    their baseline in the untimed setup of each round, under the same machine load, with this)."""

    def wrap(fn, times: list[float]):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times.append(time.perf_counter() - t0)
            return out

        return run

    return wrap
