import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from cxrbench.metrics.stats import (
    accuracy,
    auroc_fast,
    auroc_macro,
    bootstrap_ci,
    delong,
    paired_bootstrap,
    summarize,
)


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



def test_auroc_fast_equals_sklearn_with_ties_and_a_one_class_column():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(60, 3))
    y[:, 2] = 1
    s = np.round(rng.random((60, 3)), 1)  # many ties
    got = auroc_fast(s, y)
    for k in range(2):
        assert got[k] == pytest.approx(roc_auc_score(y[:, k], s[:, k]))
    assert math.isnan(got[2])
    assert auroc_macro(s, y) == pytest.approx(np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(2)]))


def test_accuracy_hand_computed():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    targets = np.array([[1, 0], [1, 0], [1, 0]])
    assert accuracy(scores, targets) == pytest.approx(2 / 3)


def test_bootstrap_interval_agrees_with_scipy():
    x = np.random.default_rng(0).normal(0.7, 0.1, size=200)
    ours = bootstrap_ci(x, None, "mean", resamples=4000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(2)).confidence_interval
    se = x.std(ddof=1) / math.sqrt(len(x))  # two Monte-Carlo estimates of the same quantile differ by << se
    assert ours["value"] == pytest.approx(x.mean())
    assert ours["low"] == pytest.approx(ref.low, abs=0.15 * se)
    assert ours["high"] == pytest.approx(ref.high, abs=0.15 * se)


def test_bootstrap_is_seeded_and_uses_the_stated_resamples():
    x = np.arange(10.0)
    a = bootstrap_ci(x, None, "mean", resamples=50, seed=7)
    assert a == bootstrap_ci(x, None, "mean", resamples=50, seed=7)
    idx = np.random.default_rng(7).integers(0, 10, size=(50, 10))  # the documented generator
    means = x[idx].mean(1)
    assert a["low"] == pytest.approx(np.quantile(means, 0.025)) and a["resamples"] == 50


def test_paired_bootstrap_agrees_with_scipy_paired_percentile_interval():
    rng = np.random.default_rng(4)
    a = rng.normal(0.62, 0.2, size=150)
    b = a - 0.03 + rng.normal(0, 0.05, size=150)
    out = paired_bootstrap(a, b, np.zeros(150), "mean", resamples=4000, seed=0)
    ref = sps.bootstrap((a, b), lambda u, v: np.mean(u) - np.mean(v), paired=True, n_resamples=4000,
                        method="percentile", random_state=np.random.default_rng(5)).confidence_interval
    se = (a - b).std(ddof=1) / math.sqrt(150)
    assert out["effect"] == pytest.approx(np.mean(a - b))
    assert out["ci"][0] == pytest.approx(ref.low, abs=0.15 * se)
    assert out["ci"][1] == pytest.approx(ref.high, abs=0.15 * se)
    assert out["p"] < 0.01  # a shift of ~6 standard errors


def test_paired_bootstrap_no_difference_and_auroc_metric():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = rng.random(80) + 0.5 * y
    same = paired_bootstrap(s, s.copy(), y, "auroc", resamples=100, seed=0)
    assert same["effect"] == 0.0 and same["p"] == 1.0
    worse = paired_bootstrap(s, rng.random(80), y, "auroc", resamples=200, seed=0)
    assert worse["effect"] > 0.1 and worse["p"] < 0.05
    with pytest.raises(ValueError, match="scores"):
        paired_bootstrap(s, s[:5], y, "auroc", resamples=10, seed=0)
    with pytest.raises(KeyError, match="unknown bootstrap metric"):
        paired_bootstrap(s, s, y, "dice?", resamples=10, seed=0)


def test_delong_hand_computed():
    # positives / negatives: a = (0.9, 0.8, 0.4) / (0.5, 0.3, 0.4); b = (0.7, 0.2, 0.6) / (0.1, 0.5, 0.3)
    # placements: V10_a = (1, 1, 1/2), V01_a = (2/3, 1, 5/6); V10_b = (1, 1/3, 1), V01_b = (1, 2/3, 2/3)
    # AUC_a = 5/6, AUC_b = 7/9; var_a = 1/27, var_b = 5/81, cov = -1/36 -> var(diff) = 25/162
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.4])
    b = np.array([0.7, 0.2, 0.6, 0.1, 0.5, 0.3])
    out = delong(a, b, y)
    assert out["auc_a"] == pytest.approx(5 / 6) and out["auc_b"] == pytest.approx(7 / 9)
    assert out["se"] == pytest.approx(math.sqrt(25 / 162))
    z = (1 / 18) / math.sqrt(25 / 162)
    assert out["z"] == pytest.approx(z)
    assert out["p"] == pytest.approx(2 * (1 - sps.norm.cdf(z)))
    assert out["auc_a"] == pytest.approx(roc_auc_score(y, a))


def test_delong_needs_both_classes():
    with pytest.raises(ValueError, match="positives"):
        delong([0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [1, 0, 0])


def test_weighted_auroc_equals_sklearn_on_each_resample_with_ties():
    from cxrbench.metrics.stats import auroc_weighted, counts

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=(40, 2))
    s = np.round(rng.random((40, 2)), 1)
    idx = rng.integers(0, 40, size=(6, 40))
    got = auroc_weighted(s, y, counts(idx, 40), chunk=4)
    for b in range(6):
        for k in range(2):
            assert got[b, k] == pytest.approx(roc_auc_score(y[idx[b], k], s[idx[b], k]))


def test_mean_bootstrap_leaves_undefined_images_out_like_the_full_set_mean():
    """Strict Dice per image is nan where prediction and ground truth are both empty: the vectorised resample mean
    must skip them as mean_value does (it returned nan for every resample, so the paired test had none)."""
    from cxrbench.metrics.stats import bootstrap_ci, paired_bootstrap

    a = np.array([np.nan, 0.8, 0.6, np.nan, 1.0])
    b = np.array([np.nan, 0.4, 0.2, 0.0, np.nan])
    idx = np.array([[1, 1, 2, 0, 0]])  # one resample by hand: a -> mean(0.8, 0.8, 0.6) = 0.7333
    from cxrbench.metrics.stats import MEAN

    assert MEAN.resampled(a, None, idx)[0] == pytest.approx((0.8 + 0.8 + 0.6) / 3)
    assert np.isnan(MEAN.resampled(a, None, np.array([[0, 3, 0, 3, 0]])))[0]
    ci = bootstrap_ci(a, np.zeros(5), "mean", resamples=200, seed=0)
    assert ci["resamples"] > 150 and ci["value"] == pytest.approx(0.8)
    res = paired_bootstrap(a, b, np.zeros(5), "mean", resamples=200, seed=0)
    assert res["resamples"] > 150 and res["effect"] == pytest.approx(0.8 - 0.2)
