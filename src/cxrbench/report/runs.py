"""The matrix's runs as DataFrames: every metric of every run, its bootstrap interval, the summary over seeds and the
paired comparisons between methods on the same test images.

Inputs are only the runs' ``metrics.json`` and ``predictions.npz`` (see :mod:`cxrbench.tasks._predictions`); a run
without predictions keeps its value and gets no interval.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench import matrix
from cxrbench.metrics import stats
from cxrbench.report import resample
from cxrbench.tasks._predictions import load_predictions

#: the metric each task is summarised by (the papers' headline metric, in its reference form)
PRIMARY = {
    "linear": "AUROC", "finetune": "AUROC", "segmentation": "Dice@reference", "segmentation_ed": "Dice@reference",
    "segmentation_ft": "Dice@reference", "finetune_medklip": "AUROC",
    "detection": "mAP@reference", "zeroshot": "AUROC", "grounding": "PointingGame", "report_generation": "BLEU-4",
}
PRIMARY_BY_DATASET = {("linear", "covidx"): "ACC"}
KEYS = ["method", "task", "dataset", "fraction", "seed"]


def primary_metric(task: str, dataset: str) -> str:
    return PRIMARY_BY_DATASET.get((task, dataset), PRIMARY.get(task, "AUROC"))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"report: missing {path} (run the evaluate phase first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"report: {path} is not valid JSON: {err}") from err


def collect(params: Mapping[str, Any], runs_dir: Path) -> pd.DataFrame:
    """One row per (run, metric): method, task, dataset, fraction, seed, status, reason, metric, value."""
    rows = []
    for run in matrix.runs(params):
        result = _read(Path(run.metrics_path(str(runs_dir))))
        base = {"method": run.method, "task": run.task, "dataset": run.dataset, "fraction": run.fraction,
                "seed": run.seed, "status": result.get("status", "ok"), "reason": result.get("reason")}
        metrics = result.get("metrics") or {}
        if not metrics:
            rows.append({**base, "metric": None, "value": math.nan})
        rows += [{**base, "metric": k, "value": float(v)} for k, v in metrics.items() if _is_number(v)]
    return pd.DataFrame(rows, columns=[*KEYS, "status", "reason", "metric", "value"])


def label_names(pred: Mapping[str, Any]) -> list[str]:
    """The names of a classification run's prediction columns, in column order (``labels`` in predictions.npz).
    Predictions written without them get no per-label intervals: the ``AUROC/<name>`` keys of metrics.json are
    sorted by name, not in column order (taking them in that order paired each disease with another's interval)."""
    return [str(n) for n in pred["labels"]] if "labels" in pred else []


def predictions(params: Mapping[str, Any], runs_dir: Path) -> dict[matrix.Run, tuple[dict, list[str]]]:
    """{run: (predictions arrays, label names)} for every run of the matrix that saved predictions."""
    out = {}
    for run in matrix.runs(params):
        pred = load_predictions(run.directory(str(runs_dir)))
        if pred is not None:
            out[run] = (pred, label_names(pred))
    return out


def bootstrap(preds: Mapping[matrix.Run, tuple[dict, list[str]]], resamples: int, seed: int) -> pd.DataFrame:
    """One row per (run, metric) with a predictions-based 95% interval: boot_low, boot_high, boot_resamples."""
    rows = []
    for run, (pred, names) in preds.items():
        for metric, ci in resample.intervals(pred, names, resamples=resamples, seed=seed).items():
            rows.append({**_run_keys(run), "metric": metric, "boot_low": ci["low"], "boot_high": ci["high"],
                         "boot_resamples": ci["resamples"]})
    return pd.DataFrame(rows, columns=[*KEYS, "metric", "boot_low", "boot_high", "boot_resamples"])


def _run_keys(run: matrix.Run) -> dict[str, Any]:
    return {"method": run.method, "task": run.task, "dataset": run.dataset, "fraction": run.fraction,
            "seed": run.seed}


def summarize(long: pd.DataFrame, boot: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (task, dataset, metric, fraction, method): n, mean, sd over seeds, the seed-level t interval
    (ci95_low/high, n >= 3), the mean of the per-seed bootstrap bounds (boot_low/high), and the interval the
    tables show (low/high, ``interval``: "seeds" for n >= 3, else "bootstrap")."""
    ok = long[(long["status"] == "ok") & long["metric"].notna()]
    if boot is not None and len(boot):
        ok = ok.merge(boot, on=[*KEYS, "metric"], how="left")
    keys = ["task", "dataset", "metric", "fraction", "method"]
    out = []
    for key, group in ok.groupby(keys, sort=True):
        rec = {**dict(zip(keys, key, strict=True)), **stats.summarize(group["value"].tolist())}
        lo = group["boot_low"].mean() if "boot_low" in group else math.nan
        hi = group["boot_high"].mean() if "boot_high" in group else math.nan
        rec["boot_low"], rec["boot_high"] = float(lo), float(hi)
        seeds = rec["n"] >= 3
        rec["low"], rec["high"] = (rec["ci95_low"], rec["ci95_high"]) if seeds else (rec["boot_low"], rec["boot_high"])
        rec["interval"] = "seeds" if seeds else ("bootstrap" if np.isfinite(rec["low"]) else "")
        out.append(rec)
    return pd.DataFrame(out)


def _statistics(pred: dict) -> dict:
    """resample.statistics, computed once per predictions dict (detection matching is the costly part)."""
    if "_stats" not in pred:
        pred["_stats"] = resample.statistics(pred)
    return pred["_stats"]


def _same_test_set(a: dict, b: dict) -> bool:
    if a["kind"] != b["kind"] or not np.array_equal(a["row"], b["row"]):
        return False
    return a["kind"] != "classification" or np.array_equal(a["targets"], b["targets"])


def _compare(a: dict, b: dict, metric: str, resamples: int, seed: int) -> dict[str, Any] | None:
    sa, sb = _statistics(a).get(metric), _statistics(b).get(metric)
    if sa is None or sb is None:
        return None
    res = stats.paired_bootstrap(sa[0], sb[0], sa[1], sa[2], resamples, seed)
    out = {"effect": res["effect"], "effect_low": res["ci"][0], "effect_high": res["ci"][1],
           "p_bootstrap": res["p"], "p_delong": math.nan}
    if metric == "AUROC" and a["kind"] == "classification" and a["targets"].shape[1] == 1:
        y = a["targets"][:, 0]
        if 2 <= y.sum() <= len(y) - 2:
            out["p_delong"] = stats.delong(a["scores"][:, 0], b["scores"][:, 0], y)["p"]
    return out


def comparisons(preds: Mapping[matrix.Run, tuple[dict, list[str]]], methods: list[str], *, resamples: int,
                seed: int) -> pd.DataFrame:
    """Every pair (method, baseline) on the same test images (same task, dataset, fraction, seed; the baseline
    is the one listed first in ``matrix.methods``), on the task's primary metric: the effect (method -
    baseline), its paired-bootstrap 95% interval and p-value, and DeLong's p for single-label AUROC."""
    groups: dict[tuple, dict[str, dict]] = {}
    for run, (pred, _) in preds.items():
        groups.setdefault((run.task, run.dataset, run.fraction, run.seed), {})[run.method] = pred
    rows = []
    order = {m: i for i, m in enumerate(methods)}
    for (task, dataset, fraction, s), by_method in sorted(groups.items()):
        metric = primary_metric(task, dataset)
        names = sorted(by_method, key=lambda m: order.get(m, len(order)))
        for baseline, method in itertools.combinations(names, 2):
            a, b = by_method[method], by_method[baseline]
            res = _compare(a, b, metric, resamples, seed) if _same_test_set(a, b) else None
            if res is not None:
                rows.append({"task": task, "dataset": dataset, "metric": metric, "fraction": fraction, "seed": s,
                             "method": method, "baseline": baseline, **res})
    cols = ["task", "dataset", "metric", "fraction", "seed", "method", "baseline", "effect", "effect_low",
            "effect_high", "p_bootstrap", "p_delong"]
    return pd.DataFrame(rows, columns=cols)
