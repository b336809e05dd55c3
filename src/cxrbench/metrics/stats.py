"""Statistics for the report: summaries over seeds, bootstrap intervals over a test set, paired tests.

- :func:`summarize`: mean, sd and a t-based 95% interval over seeds.
- :func:`bootstrap_ci`: seeded percentile bootstrap interval of one metric over the test images.
- :func:`paired_bootstrap`: two methods scored on the SAME test images, resampled together; the effect is
  ``metric(a) - metric(b)`` and the two-sided p-value tests "no difference".
- :func:`delong`: DeLong's test for two correlated AUROCs (single label), the fast form of Sun & Xu (2014).

Metrics are callables ``metric(scores, targets) -> float`` on arrays indexed along axis 0 (one entry per test
image; object arrays work for detections); :data:`METRICS` names the ones the report uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

Metric = Callable[[Any, Any], float]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"n", "mean", "sd", "ci95_low", "ci95_high", "n_nan"}`` of the finite values.

    sd uses ddof = 1 (``nan`` for n < 2). The 95% CI is mean ± t_{0.975, n-1} sd / sqrt(n) and is given only
    for n >= 3 (``nan`` otherwise). Non-finite values (a failed or undefined run) are left out and counted in
    ``n_nan`` so that they are never averaged silently.
    """
    arr = np.asarray(list(values), dtype=np.float64).reshape(-1)
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    out = {"n": n, "mean": math.nan, "sd": math.nan, "ci95_low": math.nan, "ci95_high": math.nan,
           "n_nan": int(arr.size - n)}
    if n == 0:
        return out
    out["mean"] = float(finite.mean())
    if n >= 2:
        out["sd"] = float(finite.std(ddof=1))
    if n >= 3:
        half = float(sps.t.ppf(0.975, n - 1)) * out["sd"] / math.sqrt(n)
        out["ci95_low"], out["ci95_high"] = out["mean"] - half, out["mean"] + half
    return out


# ---------------------------------------------------------------- metrics on (scores, targets) arrays


def auroc_fast(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-column AUROC by the rank-sum (Mann-Whitney) identity, ties counted 1/2, as sklearn's roc_auc_score.

    scores, targets: (N,) or (N, K); returns (K,) with ``nan`` for a column lacking one of the classes.
    AUROC = (sum of the positives' mid-ranks - n1 (n1 + 1) / 2) / (n1 n0).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    y = np.asarray(targets).reshape(len(targets), -1) > 0.5
    ranks = sps.rankdata(s, axis=0)
    n1 = y.sum(0).astype(np.float64)
    n0 = y.shape[0] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def auroc_macro(scores: Any, targets: Any) -> float:
    """Mean AUROC over the labels that have both classes (``nan`` when none has)."""
    auc = auroc_fast(scores, targets)
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else math.nan


def accuracy(scores: Any, targets: Any) -> float:
    """Multi-class top-1 accuracy: argmax of scores (N, K) against argmax of one-hot targets (N, K)."""
    return float(np.mean(np.argmax(scores, 1) == np.argmax(targets, 1)))


def mean_value(scores: Any, targets: Any = None) -> float:
    """Mean of per-image values (N,) (Dice per image, pointing-game hits); ``targets`` unused."""
    v = np.asarray(scores, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) multiplicity of each image in each resample of ``idx`` (B, n)."""
    b = idx.shape[0]
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def auroc_weighted(scores: np.ndarray, targets: np.ndarray, w: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Per-column AUROC of B weighted copies of one test set: scores, targets (N, K), w (B, N) image weights
    (bootstrap multiplicities) -> (B, K). The weighted Mann-Whitney statistic: sum over positive/negative pairs of
    w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) over (sum w_pos)(sum w_neg); with w = 1 it is :func:`auroc_fast`.
    One sort per column; ties handled per group of equal scores; ``chunk`` resamples at a time bound the memory."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    y = np.asarray(targets).reshape(len(targets), -1) > 0.5
    out = np.empty((w.shape[0], s.shape[1]))
    for k in range(s.shape[1]):
        order = np.argsort(s[:, k], kind="mergesort")
        sk, yk = s[order, k], y[order, k]
        new_group = np.r_[True, sk[1:] != sk[:-1]]
        first = np.maximum.accumulate(np.where(new_group, np.arange(len(sk)), 0))  # group start of each element
        last = np.r_[np.flatnonzero(new_group)[1:], len(sk)][np.cumsum(new_group) - 1]  # one past the group end
        for b0 in range(0, w.shape[0], chunk):
            wk = w[b0 : b0 + chunk][:, order]
            cum = np.concatenate([np.zeros((len(wk), 1)), np.cumsum(wk * ~yk, 1)], 1)  # negatives before index
            below, tied = cum[:, first], cum[:, last] - cum[:, first]
            num = (wk * yk * (below + 0.5 * tied)).sum(1)
            den = (wk * yk).sum(1) * (wk * ~yk).sum(1)
            out[b0 : b0 + chunk, k] = np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)
    return out


class _Vectorised:
    """A metric ``fn(scores, targets) -> float`` with ``resampled(scores, targets, idx (B, N)) -> (B,)``, the same
    metric on every resample at once (the bootstrap's fast path)."""

    def __init__(self, fn: Metric, resampled: Callable[[Any, Any, np.ndarray], np.ndarray]) -> None:
        self.fn, self.resampled = fn, resampled
        self.__doc__ = fn.__doc__

    def __call__(self, scores: Any, targets: Any) -> float:
        return self.fn(scores, targets)


def _auroc_resampled(scores: Any, targets: Any, idx: np.ndarray) -> np.ndarray:
    auc = auroc_weighted(scores, targets, counts(idx, len(scores)))
    defined = np.isfinite(auc)
    total = np.where(defined, auc, 0.0).sum(1)
    return np.divide(total, defined.sum(1), out=np.full(len(auc), np.nan), where=defined.any(1))


def _accuracy_resampled(scores: Any, targets: Any, idx: np.ndarray) -> np.ndarray:
    correct = (np.argmax(scores, 1) == np.argmax(targets, 1)).astype(np.float64)
    return correct[idx].mean(1)


def _mean_resampled(scores: Any, targets: Any, idx: np.ndarray) -> np.ndarray:
    """Like :func:`mean_value`: undefined (nan) per-image values are left out; a resample with none defined is
    nan (and dropped by the bootstrap)."""
    v = np.asarray(scores, dtype=np.float64)[idx]
    defined = np.isfinite(v)
    total = np.where(defined, v, 0.0).sum(1)
    return np.divide(total, defined.sum(1), out=np.full(len(v), np.nan), where=defined.any(1))


AUROC = _Vectorised(auroc_macro, _auroc_resampled)
ACCURACY = _Vectorised(accuracy, _accuracy_resampled)
MEAN = _Vectorised(mean_value, _mean_resampled)
METRICS: dict[str, Metric] = {"auroc": AUROC, "accuracy": ACCURACY, "mean": MEAN}


def resampled_values(fn: Metric, scores: Any, targets: Any, idx: np.ndarray) -> np.ndarray:
    """(B,) metric values on the resamples ``idx`` (B, N): the vectorised form when ``fn`` has one."""
    if hasattr(fn, "resampled"):
        return np.asarray(fn.resampled(scores, targets, idx), dtype=np.float64)
    return np.array([fn(_take(scores, i), _take(targets, i)) for i in idx], dtype=np.float64)


def _metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise KeyError(f"unknown bootstrap metric {metric!r}; known: {sorted(METRICS)}")
    return METRICS[metric]


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from a generator seeded by ``seed`` alone."""
    if n < 1:
        raise ValueError("bootstrap: the test set is empty")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array (or of a sequence turned into one); ``None`` stays ``None``."""
    if x is None:
        return None
    return (x if isinstance(x, np.ndarray) else np.asarray(x))[idx]


def bootstrap_ci(
    scores: Any, targets: Any, metric: str | Metric, *, resamples: int, seed: int, level: float = 0.95
) -> dict[str, float]:
    """Percentile bootstrap of ``metric(scores, targets)`` over test images.

    Images are resampled with replacement ``resamples`` times (rng ``numpy.random.default_rng(seed)``); the
    interval is the (1 - level)/2 and (1 + level)/2 quantiles of the resampled values, resamples where the
    metric is undefined (e.g. a resample without positives) left out. Returns
    ``{"value", "low", "high", "resamples"}`` (``resamples`` = defined resamples).
    """
    fn = _metric(metric)
    n = len(scores)
    values = resampled_values(fn, scores, targets, _indices(n, resamples, seed))
    values = values[np.isfinite(values)]
    a = (1 - level) / 2
    low, high = (np.quantile(values, [a, 1 - a]) if values.size else (math.nan, math.nan))
    return {"value": float(fn(scores, targets)), "low": float(low), "high": float(high),
            "resamples": int(values.size)}


def paired_bootstrap(
    scores_a: Any,
    scores_b: Any,
    targets: Any,
    metric: str | Metric,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap test of ``metric(a) - metric(b)`` on the same test images.

    scores_a, scores_b: one entry per test image, in the same image order; targets: the shared ground truth.
    Each resample draws image indices once and scores both methods on them, so the image-to-image variation
    common to both cancels. Returns ``{"effect": metric(a) - metric(b) on the full set, "ci": (low, high)
    percentile interval of the resampled differences, "p": two-sided p-value, "resamples": defined resamples}``
    with p = min(1, 2 min(#{d <= 0}, #{d >= 0}) + 1) / (B + 1)), the percentile-bootstrap test of a zero
    difference (the +1 keeps p > 0 for a finite B).
    """
    if len(scores_a) != len(scores_b) or len(scores_a) != len(targets):
        raise ValueError(f"paired_bootstrap: {len(scores_a)} / {len(scores_b)} scores for {len(targets)} targets")
    fn = _metric(metric)
    idx = _indices(len(targets), resamples, seed)
    d = resampled_values(fn, scores_a, targets, idx) - resampled_values(fn, scores_b, targets, idx)
    d = d[np.isfinite(d)]
    effect = float(fn(scores_a, targets) - fn(scores_b, targets))
    if d.size == 0:
        return {"effect": effect, "ci": (math.nan, math.nan), "p": math.nan, "resamples": 0}
    a = (1 - level) / 2
    low, high = np.quantile(d, [a, 1 - a])
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, (2 * tail + 1) / (d.size + 1))
    return {"effect": effect, "ci": (float(low), float(high)), "p": float(p), "resamples": int(d.size)}


# ---------------------------------------------------------------- DeLong


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components: V10[i] = mean_j psi(pos_i, neg_j), V01[j] = mean_i psi(pos_i, neg_j) with
    psi(x, y) = 1 if x > y, 1/2 if x == y, else 0."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(1), psi.mean(0)


def delong(scores_a: Any, scores_b: Any, targets: Any) -> dict[str, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) test of AUROC(a) = AUROC(b) for one binary label.

    scores_a, scores_b: (N,) scores of the two methods on the same images; targets (N,) in {0, 1}.
    With m positives and n negatives, AUC_r = mean(V10_r) and the covariance of (AUC_a, AUC_b) is
    S10 / m + S01 / n (S10, S01 the 2 x 2 sample covariances, ddof = 1, of the placements V10, V01);
    z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab), p two-sided from the standard normal.
    Returns ``{"auc_a", "auc_b", "effect", "se", "z", "p"}``. O(m n) memory: fine for test sets of a few
    thousand images.
    """
    y = np.asarray(targets).reshape(-1) > 0.5
    sa, sb = (np.asarray(s, dtype=np.float64).reshape(-1) for s in (scores_a, scores_b))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong: need >= 2 positives and >= 2 negatives, got {m} and {n}")
    v10, v01 = zip(*(_placements(s[y], s[~y]) for s in (sa, sb)), strict=True)
    cov = np.cov(np.stack(v10), ddof=1) / m + np.cov(np.stack(v01), ddof=1) / n
    auc = [float(v.mean()) for v in v10]
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    effect = auc[0] - auc[1]
    if var <= 0:
        z = 0.0 if effect == 0 else math.copysign(math.inf, effect)
    else:
        z = effect / math.sqrt(var)
    p = float(2 * sps.norm.sf(abs(z)))
    return {"auc_a": auc[0], "auc_b": auc[1], "effect": effect, "se": math.sqrt(max(var, 0.0)), "z": z, "p": p}
