"""Classification metrics: per-label AUROC, max-F1 (zero-shot protocol) and accuracy.

Inputs are numpy arrays or torch tensors; outputs are python floats in plain dicts, keyed ``"<METRIC>"`` for
the macro value and ``"<METRIC>/<label name>"`` per label, ready for ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from cxrbench.metrics._common import check_same_shape, to_numpy


def _as_2d(y_true: Any, y_score: Any, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    t = to_numpy(y_true, name="y_true")
    s = to_numpy(y_score, name="y_score")
    if t.ndim == 1:
        t, s = t[:, None], s.reshape(-1, 1) if s.ndim == 1 else s
    check_same_shape(t, s, ("y_true", "y_score"))
    if t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(f"y_true has shape {t.shape}; expected (N, K) with K = len(names) = {len(names)}")
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0/1 labels (uncertain labels must be mapped before scoring)")
    return t, s


def auroc(y_true: Any, y_score: Any, names: Sequence[str]) -> dict[str, Any]:
    """Per-label and macro AUROC (``sklearn.metrics.roc_auc_score``).

    y_true (N, K) in {0, 1}; y_score (N, K) any monotone score. Returns ``{"AUROC": macro mean over the labels
    whose test column holds both classes, "AUROC/<name>": per label}``. A label with one class only has AUROC
    ``nan``, is left out of the macro mean and is listed under ``"AUROC/undefined"`` (a list of names, empty
    when every label is defined). The macro value is ``nan`` when no label is defined.
    """
    t, s = _as_2d(y_true, y_score, names)
    out: dict[str, Any] = {}
    defined, undefined = [], []
    for k, name in enumerate(names):
        if np.unique(t[:, k]).size < 2:
            out[f"AUROC/{name}"] = math.nan
            undefined.append(name)
            continue
        out[f"AUROC/{name}"] = float(roc_auc_score(t[:, k], s[:, k]))
        defined.append(out[f"AUROC/{name}"])
    out["AUROC"] = float(np.mean(defined)) if defined else math.nan
    out["AUROC/undefined"] = undefined
    return out


def max_f1(y_true: Any, y_score: Any, *, acc_rule: str = "reference") -> dict[str, float]:
    """Maximum F1 over decision thresholds, and accuracy at the maximising threshold.

    y_true (N,) in {0, 1}; y_score (N,). Candidate thresholds are the distinct scores; at threshold t a
    sample is predicted positive when ``score >= t`` and F1 = 2 P R / (P + R) (0 where P + R = 0), as given by
    ``sklearn.metrics.precision_recall_curve``. Ties go to the lowest maximising threshold (``argmax``).

    The threshold is chosen ON THE TEST SET, as in the published zero-shot protocol (MedKLIP, reused by G2D):
    this is an optimistic, oracle-threshold number and must be labelled so next to every table entry.

    ``acc_rule="reference"`` reproduces the published accuracy, computed with ``score > t`` (strictly
    greater, so samples scoring exactly t count as negative even though F1 counted them positive);
    ``acc_rule="consistent"`` uses ``score >= t`` like F1. Returns ``{"F1", "threshold", "ACC"}``; all
    ``nan`` when y_true has no positive.
    """
    t = to_numpy(y_true, name="y_true").reshape(-1)
    s = to_numpy(y_score, name="y_score").reshape(-1)
    check_same_shape(t, s, ("y_true", "y_score"))
    if acc_rule not in ("reference", "consistent"):
        raise ValueError(f"acc_rule must be 'reference' or 'consistent', got {acc_rule!r}")
    if not (t == 1).any():
        return {"F1": math.nan, "threshold": math.nan, "ACC": math.nan}
    precision, recall, thresholds = precision_recall_curve(t, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom != 0)
    best = int(np.argmax(f1[: len(thresholds)]))
    thr = float(thresholds[best])
    pred = s > thr if acc_rule == "reference" else s >= thr
    return {"F1": float(f1[best]), "threshold": thr, "ACC": float(np.mean(pred == (t == 1)))}


def multilabel_zero_shot(
    y_true: Any, y_score: Any, names: Sequence[str], *, acc_rule: str = "reference"
) -> dict[str, Any]:
    """Zero-shot classification metrics: AUROC, max-F1 and accuracy at the max-F1 threshold, per label and
    macro.

    y_true (N, K), y_score (N, K) (e.g. softmax of positive vs negative prompt similarity). Keys: ``"AUROC"``,
    ``"F1"``, ``"ACC"`` (macro means over labels where the value is defined) and ``"<METRIC>/<name>"``,
    ``"threshold/<name>"`` per label, plus ``"AUROC/undefined"``. The F1 threshold is chosen on the test set
    (see :func:`max_f1`).
    """
    t, s = _as_2d(y_true, y_score, names)
    out = auroc(t, s, names)
    f1s, accs = [], []
    for k, name in enumerate(names):
        res = max_f1(t[:, k], s[:, k], acc_rule=acc_rule)
        for key in ("F1", "ACC", "threshold"):
            out[f"{key}/{name}"] = res[key]
        if not math.isnan(res["F1"]):
            f1s.append(res["F1"])
            accs.append(res["ACC"])
    out["F1"] = float(np.mean(f1s)) if f1s else math.nan
    out["ACC"] = float(np.mean(accs)) if accs else math.nan
    return out


def accuracy(y_true_idx: Any, logits: Any) -> float:
    """Top-1 accuracy: mean of ``argmax(logits, 1) == y_true_idx``. y_true_idx (N,) int; logits (N, C)."""
    t = to_numpy(y_true_idx, dtype=np.int64, name="y_true_idx").reshape(-1)
    z = to_numpy(logits, name="logits")
    if z.ndim != 2 or z.shape[0] != t.shape[0]:
        raise ValueError(f"logits has shape {z.shape}; expected (N, C) with N = len(y_true_idx) = {len(t)}")
    if t.size and (t.min() < 0 or t.max() >= z.shape[1]):
        raise ValueError(f"y_true_idx holds class indices outside [0, {z.shape[1]})")
    return float(np.mean(np.argmax(z, axis=1) == t)) if t.size else math.nan
