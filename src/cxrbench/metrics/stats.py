"""Summary statistics over seeds: mean, sample standard deviation and a t-based 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


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
