import math

import numpy as np
import pytest
from scipy import stats as sps

from cxrbench.metrics.stats import summarize


def test_summarize_three_values_hand_computed():
    out = summarize([1.0, 2.0, 3.0])
    assert out["n"] == 3 and out["mean"] == 2.0 and out["sd"] == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert out["ci95_low"] == pytest.approx(2.0 - half)
    assert out["ci95_high"] == pytest.approx(2.0 + half)


def test_summarize_matches_scipy_interval():
    x = np.array([0.71, 0.74, 0.69, 0.77, 0.73])
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    out = summarize(x)
    assert out["ci95_low"] == pytest.approx(lo) and out["ci95_high"] == pytest.approx(hi)


def test_small_n_and_nan_handling():
    two = summarize([0.5, 0.7])
    assert two["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert math.isnan(two["ci95_low"]) and math.isnan(two["ci95_high"])
    one = summarize([0.8, float("nan")])
    assert one["n"] == 1 and one["n_nan"] == 1 and one["mean"] == 0.8 and math.isnan(one["sd"])
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["mean"])
