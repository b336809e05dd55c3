"""Fixtures of the data tests: helpers that read the problems a reader or a preparation recorded."""

from __future__ import annotations

from collections import Counter

import pytest


def _items(result):
    return result.problems if hasattr(result, "problems") else result


@pytest.fixture
def kinds():
    """``kinds(result)``: {kind: count} of a ReadResult's (or a list's) problems."""
    return lambda result: dict(Counter(p.kind for p in _items(result)))


@pytest.fixture
def only():
    """``only(result, kind)``: the single problem of ``kind`` (asserting there is exactly one)."""

    def pick(result, kind):
        items = [p for p in _items(result) if p.kind == kind]
        assert len(items) == 1, f"expected one {kind!r} problem, got {items}"
        return items[0]

    return pick
