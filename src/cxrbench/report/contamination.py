"""The contamination audit in the report: the counts table, and every metric again without the contaminated images.

``tables/contamination.*``: one row per (pretraining corpus, test split) from the audit's ``contamination.json``
(``cxrbench.audit``): how it was matched (ids or perceptual hash), test images, shared images, shared patients.

``tables/contamination_metrics.*`` (with ``audit.exclude_contaminated: true``): for every run with predictions on a
test set the audit found contaminated, each metric on the whole test set beside the same metric recomputed from the
run's ``predictions.npz`` on the test images NOT contaminated by any corpus (``cxrbench.report.resample`` computes the
metric on the subset exactly as on the whole set). Recomputed at report time: no run is repeated, and every method
loses the same images, so paired comparisons stay paired. A run whose predictions are not on the audited store (a
row beyond the store) is listed with an empty clean value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.report import resample

PAIR_COLUMNS = ["corpus", "test", "by", "corpus_images", "test_images", "shared_images", "shared_patients"]
METRIC_COLUMNS = ["method", "task", "dataset", "fraction", "seed", "metric", "all", "clean", "test_images",
                  "excluded"]
#: per-detection arrays and the per-image index they carry (re-indexed when images are dropped)
_DETECTION = {"det_image": ("det_boxes", "det_scores"), "gt_image": ("gt_boxes",)}


def load(path: str | Path) -> dict[str, Any] | None:
    """The audit's result, or None when the file does not exist (the report then says so)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def pairs_table(result: Mapping[str, Any] | None) -> pd.DataFrame:
    return pd.DataFrame(list((result or {}).get("pairs", [])), columns=PAIR_COLUMNS)


def subset(pred: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, Any]:
    """``pred`` (a run's predictions.npz arrays) restricted to the test images where ``keep`` (N,) bool: per-image
    arrays sliced, detections and ground-truth boxes of dropped images removed and the rest re-indexed."""
    keep = np.asarray(keep, dtype=bool)
    n = len(pred["row"])
    new_index = np.cumsum(keep) - 1
    out: dict[str, Any] = {}
    for key, value in pred.items():
        arr = np.asarray(value)
        if key in _DETECTION:
            sel = keep[arr]
            out[key] = new_index[arr[sel]]
            out.update({k: np.asarray(pred[k])[sel] for k in _DETECTION[key]})
        elif key not in out:
            out[key] = arr[keep] if arr.ndim >= 1 and len(arr) == n and key not in ("kind",) else value
    return out


def _values(pred: Mapping[str, Any], names: list[str]) -> dict[str, float]:
    return {m: float(fn(v, t)) for m, (v, t, fn) in resample.statistics(dict(pred), names).items()}


def clean_metrics(preds: Mapping[Any, tuple[dict, list[str]]], result: Mapping[str, Any] | None) -> pd.DataFrame:
    """One row per (run, metric) of the runs on a contaminated test set: the metric on all test images and on the
    clean ones (``preds``: ``runs.predictions``, {Run: (arrays, label names)})."""
    bad = {d: np.asarray(v["rows"], dtype=np.int64) for d, v in (result or {}).get("contaminated", {}).items()}
    out = []
    for run, (pred, names) in preds.items():
        rows = bad.get(run.dataset)
        if rows is None or not len(rows):
            continue
        keep = ~np.isin(np.asarray(pred["row"]), rows)
        full = _values(pred, names)
        clean = _values(subset(pred, keep), names) if keep.any() else {}
        for metric, value in full.items():
            out.append({"method": run.method, "task": run.task, "dataset": run.dataset, "fraction": run.fraction,
                        "seed": run.seed, "metric": metric, "all": value, "clean": clean.get(metric, math.nan),
                        "test_images": len(keep), "excluded": int((~keep).sum())})
    return pd.DataFrame(out, columns=METRIC_COLUMNS)


def notes(result: Mapping[str, Any] | None, path: str) -> list[str]:
    """What the counts table states: where the audit's result is, how images were matched."""
    if result is None:
        return [f"No audit result at {path}: run `python -m cxrbench audit` (the workflow's audit rule)."]
    lines = [f"Audit result: {path}. by ids: hashed image ids (MIMIC-CXR dicom ids are MS-CXR's); by hash: phash "
             f"({result['hash_size']}x{result['hash_size']} DCT bits of the prepared pixels), shared = within "
             f"{result['hamming_threshold']} bits of a corpus image. Shared patients: test patients with an image "
             "in the corpus (by ids), or with a matched image (by hash)."]
    for name, missed in sorted(result.get("unmatched", {}).items()):
        lines.append(f"{name}: entries not in a prepared store (not audited by hash): "
                     + ", ".join(f"{d} {n}" for d, n in sorted(missed.items())))
    return lines


def metric_table(preds: Mapping[Any, tuple[dict, list[str]]], result: Mapping[str, Any] | None, enabled: bool) -> \
        tuple[pd.DataFrame, list[str]]:
    """The both-ways metric table and its notes (empty, with a note, unless ``enabled``)."""
    if not enabled or not result:
        return pd.DataFrame(columns=METRIC_COLUMNS), ["audit.exclude_contaminated is false: metrics are reported "
                                                      "on the whole test sets only."]
    table = clean_metrics(preds, result)
    for c in ("all", "clean"):
        table[c] = table[c].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}")
    return table, ["Each metric (x100) on the whole test set (all) and without the images any corpus holds "
                   "(clean), recomputed from the run's predictions.npz; excluded: images dropped."]


def report_tables(params: Mapping[str, Any], preds: Mapping[Any, tuple[dict, list[str]]]) -> \
        list[tuple[str, str, list[str], pd.DataFrame]]:
    """(file stem, title, notes, table) of the two tables, from ``params`` (the report's: ``audit.out``,
    ``audit.exclude_contaminated``, ``scale``) and the runs' predictions."""
    from cxrbench.audit import audit_file, section
    from cxrbench.report.tables import DEMO_WARNING

    audit = section(params)
    path = audit_file(params)
    result = load(path)
    head = [f"**{DEMO_WARNING}**"] if params.get("scale") == "demo" else []
    metrics, metric_notes = metric_table(preds, result, bool(audit["exclude_contaminated"]))
    return [("contamination", "Contamination: test images each pretraining corpus holds", [*head, *notes(result, path)],
             pairs_table(result)),
            ("contamination_metrics", "Metrics with and without the contaminated test images",
             [*head, *metric_notes], metrics)]
