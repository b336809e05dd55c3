"""What each metric of a run is, as a function of its per-image test predictions (``predictions.npz``).

:func:`statistics` turns one run's predictions into ``{metric key: (per-image values, targets, metric)}`` so
that :func:`cxrbench.metrics.stats.bootstrap_ci` and :func:`~cxrbench.metrics.stats.paired_bootstrap` resample
images for any task the same way. The full-set value of each metric equals the task's own metric (tested), so an
interval is always an interval around the number in ``metrics.json``.

Reference Dice keeps its batch quirk: a resample is split into consecutive batches of the evaluation batch size and
the batch means are averaged, as the task does on the ordered test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cxrbench.metrics import stats
from cxrbench.metrics import text as text_metrics
from cxrbench.metrics.detection import IOU_THRESHOLDS, _match, average_precision, box_iou

Entry = tuple[Any, Any, Callable[[Any, Any], float]]


def _classification(pred: dict[str, np.ndarray], names: list[str] | None) -> dict[str, Entry]:
    s, y = pred["scores"], pred["targets"]
    out: dict[str, Entry] = {"AUROC": (s, y, stats.AUROC)}
    if bool(pred.get("multiclass", False)):
        out["ACC"] = (s, y, stats.ACCURACY)
    for k, name in enumerate(names or []):
        if k < s.shape[1]:
            out[f"AUROC/{name}"] = (s[:, k], y[:, k], stats.AUROC)
    return out


def _batched_mean(batch_size: int) -> Callable[[Any, Any], float]:
    """Mean of consecutive batch means (the reference Dice's averaging), on the full set and on resamples."""

    def fn(values: Any, _: Any) -> float:
        v = np.asarray(values, dtype=np.float64)
        return float(np.mean([v[i : i + batch_size].mean() for i in range(0, v.size, batch_size)]))

    def resampled(values: Any, _: Any, idx: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)[idx]
        pad = -v.shape[1] % batch_size
        v = np.concatenate([v, np.full((len(v), pad), np.nan)], 1).reshape(len(v), -1, batch_size)
        return np.nanmean(v, 2).mean(1)

    return stats._Vectorised(fn, resampled)


def _strict_image(values: Any, denom: Any) -> float:
    keep = np.asarray(denom) > 0
    return float(np.mean(np.asarray(values)[keep])) if keep.any() else math.nan


def _strict_image_resampled(values: Any, denom: Any, idx: np.ndarray) -> np.ndarray:
    keep = (np.asarray(denom) > 0)[idx]
    total = (np.asarray(values, dtype=np.float64)[idx] * keep).sum(1)
    return np.divide(total, keep.sum(1), out=np.full(len(idx), np.nan), where=keep.any(1))


def _global(pooled: Any, _: Any) -> float:
    return float(2 * pooled[:, 0].sum() / pooled[:, 1].sum()) if pooled[:, 1].sum() > 0 else math.nan


def _global_resampled(pooled: Any, _: Any, idx: np.ndarray) -> np.ndarray:
    c = stats.counts(idx, len(pooled))
    num, den = c @ pooled[:, 0], c @ pooled[:, 1]
    return np.divide(2 * num, den, out=np.full(len(idx), np.nan), where=den > 0)


def _segmentation(pred: dict[str, np.ndarray], _: Any) -> dict[str, Entry]:
    inter, p, g = (pred[k].astype(np.float64) for k in ("inter", "pred", "gt"))
    denom = p + g
    dice = np.divide(2 * inter, denom, out=np.zeros_like(inter), where=denom > 0)
    reference = np.where(g > 0, dice, (p == 0).astype(np.float64))
    pooled = np.stack([inter, denom], 1)
    return {
        "Dice@reference": (reference, reference, _batched_mean(int(pred["batch_size"]))),
        "Dice@strict": (dice, denom, stats._Vectorised(_strict_image, _strict_image_resampled)),
        "Dice@strict_global": (pooled, pooled, stats._Vectorised(_global, _global_resampled)),
    }


def detection_images(pred: dict[str, np.ndarray]) -> np.ndarray:
    """Object array (N,) of per-image ``(scores (d,), tp (d, T) over IOU_THRESHOLDS, n_gt)``: matching is per
    image, so a resample only re-pools these (no re-matching)."""
    n = len(pred["row"])
    out = np.empty(n, dtype=object)
    for i in range(n):
        d = pred["det_image"] == i
        boxes, scores = pred["det_boxes"][d].astype(np.float64), pred["det_scores"][d].astype(np.float64)
        gt = pred["gt_boxes"][pred["gt_image"] == i].astype(np.float64)
        iou = box_iou(boxes, gt)
        tp = np.stack([_match(iou, t) for t in IOU_THRESHOLDS], 1) if len(boxes) else np.zeros((0, 8), bool)
        out[i] = (scores, tp, len(gt))
    return out


def detection_map(images: Any, reference: bool) -> float:
    """mAP over IOU_THRESHOLDS (COCO 101-point AP) of pooled per-image matches; ``reference`` keeps only images
    with >= 1 detection and >= 1 ground-truth box, as :func:`cxrbench.metrics.detection.map_reference`."""
    keep = [im for im in images if not reference or (len(im[0]) and im[2])]
    n_gt = sum(im[2] for im in keep)
    if n_gt == 0:
        return math.nan
    scores = np.concatenate([im[0] for im in keep] + [np.zeros(0)])
    tp = np.concatenate([im[1] for im in keep] + [np.zeros((0, len(IOU_THRESHOLDS)), bool)])
    return float(np.mean([average_precision(tp[:, t], scores, n_gt) for t in range(len(IOU_THRESHOLDS))]))


def _weighted_map(images: np.ndarray, w_img: np.ndarray) -> np.ndarray:
    """(B,) mAP of B weighted copies of the test set (w_img (B, N) image weights; 0 drops an image). Detections
    are pooled in image order and sorted once (stable, by -score, as COCO); a weight-w detection counts w times
    in the cumulative TP/FP sums. With unit weights this is :func:`detection_map` exactly."""
    n_gt = w_img @ np.array([im[2] for im in images], dtype=np.float64)
    det_img = np.concatenate([np.full(len(im[0]), i) for i, im in enumerate(images)] + [np.zeros(0, int)])
    scores = np.concatenate([im[0] for im in images] + [np.zeros(0)])
    tp = np.concatenate([im[1] for im in images] + [np.zeros((0, len(IOU_THRESHOLDS)), bool)])
    b, d = len(w_img), len(scores)
    if d == 0:
        return np.where(n_gt > 0, 0.0, np.nan)
    order = np.argsort(-scores, kind="mergesort")
    w = w_img[:, det_img[order]]
    offset = 2.0 * np.arange(b)[:, None]
    query = (np.linspace(0.0, 1.0, 101)[None, :] + offset).ravel()
    aps = []
    for t in range(tp.shape[1]):
        hit = tp[order, t]
        tps, fps = np.cumsum(w * hit, 1), np.cumsum(w * ~hit, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(n_gt[:, None] > 0, tps / n_gt[:, None], 0.0)
        precision = tps / (tps + fps + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]
        pos = np.searchsorted((recall + offset).ravel(), query, side="left").reshape(b, 101) - d * np.arange(b)[:, None]
        sampled = np.where(pos < d, np.take_along_axis(envelope, np.minimum(pos, d - 1), 1), 0.0)
        aps.append(sampled.mean(1))
    return np.where(n_gt > 0, np.mean(aps, 0), np.nan)


def _detection_metric(reference: bool) -> stats._Vectorised:
    def keep(images: np.ndarray) -> np.ndarray:
        return np.array([(not reference) or bool(len(im[0]) and im[2]) for im in images], dtype=np.float64)

    def resampled(images: Any, _: Any, idx: np.ndarray) -> np.ndarray:
        return _weighted_map(images, stats.counts(idx, len(images)) * keep(images))

    return stats._Vectorised(lambda images, _: detection_map(images, reference), resampled)


def _detection(pred: dict[str, np.ndarray], _: Any) -> dict[str, Entry]:
    images = detection_images(pred)
    rows = pred["row"]
    return {"mAP@reference": (images, rows, _detection_metric(True)),
            "mAP@strict": (images, rows, _detection_metric(False))}


def _grounding(pred: dict[str, np.ndarray], _: Any) -> dict[str, Entry]:
    return {m: (pred[k], pred[k], stats.MEAN) for m, k in (("PointingGame", "hit"), ("IoU", "iou"),
                                                                    ("Dice", "dice"))}


KINDS: dict[str, Callable[[dict[str, np.ndarray], Any], dict[str, Entry]]] = {
    "classification": _classification, "segmentation": _segmentation, "detection": _detection,
    "grounding": _grounding, "text": text_metrics.statistics,
}


def statistics(pred: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, Entry]:
    """``{metric key: (values, targets, metric)}`` for one run's predictions; ``names``: the label names
    (metrics.json's ``AUROC/<name>`` keys) in column order, for per-label intervals."""
    kind = str(pred["kind"])
    if kind not in KINDS:
        raise KeyError(f"predictions of kind {kind!r}: no resampling rule (known: {sorted(KINDS)})")
    return KINDS[kind](pred, names)


def intervals(pred: dict[str, np.ndarray], names: list[str] | None, *, resamples: int, seed: int) -> dict:
    """``{metric key: {"value", "low", "high", "resamples"}}``: the 95% percentile bootstrap of every metric."""
    return {m: stats.bootstrap_ci(v, t, fn, resamples=resamples, seed=seed)
            for m, (v, t, fn) in statistics(pred, names).items()}
