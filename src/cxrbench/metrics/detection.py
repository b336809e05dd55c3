"""Single-class box detection mAP over IoU thresholds 0.40:0.05:0.75, reference (MGCA) and strict forms.

The published numbers come from
``torchmetrics.detection.MeanAveragePrecision(iou_thresholds=0.40:0.05:0.75)``, i.e. COCO evaluation: greedy
matching of score-sorted detections to the best still-unmatched ground truth with IoU >= t, at most 100
detections per image, area range "all", and **101-point interpolated AP** (precision envelope sampled at
recall 0, 0.01, ..., 1). ``interpolation="coco101"`` (default) reproduces that exactly and is tested for
equality with pycocotools; ``interpolation="all"`` gives all-point (VOC2010+) AP, the area under the
precision envelope, which is slightly larger or smaller than 101-point AP depending on the curve.

Boxes are (x1, y1, x2, y2) in pixels, IoU = |A ∩ B| / |A ∪ B| in continuous coordinates (no +1: the "+1 pixel"
IoU is MGCA's NMS only, ``cxrbench.models.yolo.mgca_nms``). Predicted boxes are taken as given: MGCA does not clip
them to the image, and neither does ``cxrbench.models.yolo.decode``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrbench.metrics._common import to_numpy

IOU_THRESHOLDS: tuple[float, ...] = (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)
MAX_DETECTIONS = 100  # torchmetrics MeanAveragePrecision's default (max_detection_thresholds[-1]): MGCA's metric
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes a (n, 4) and b (m, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match(iou: np.ndarray, thr: float) -> np.ndarray:
    """(n,) bool true positives for detections (rows of ``iou``, already score-sorted) against GT (columns):
    each detection takes the unmatched GT of highest IoU >= thr (COCO's greedy rule)."""
    n, m = iou.shape
    taken = np.zeros(m, dtype=bool)
    tp = np.zeros(n, dtype=bool)
    for d in range(n):
        best, cur = -1, min(thr, 1 - 1e-10)
        for g in range(m):
            if taken[g] or iou[d, g] < cur:
                continue
            best, cur = g, iou[d, g]
        if best >= 0:
            taken[best], tp[d] = True, True
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int, interpolation: str = "coco101") -> float:
    """AP of detections pooled over images. tp (D,) bool, scores (D,) (pooled in image order; sorted here
    with a stable sort on -score like COCO), n_gt = number of GT boxes. ``nan`` when n_gt = 0."""
    if interpolation not in ("coco101", "all"):
        raise ValueError(f"interpolation must be 'coco101' or 'all', got {interpolation!r}")
    if n_gt == 0:
        return math.nan
    if tp.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order]).astype(np.float64)
    fps = np.cumsum(~tp[order]).astype(np.float64)
    recall = tps / n_gt
    precision = tps / (tps + fps + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if interpolation == "coco101":
        idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
        sampled = np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0)
        return float(np.mean(sampled))
    r = np.concatenate(([0.0], recall))
    return float(np.sum((r[1:] - r[:-1]) * envelope))


def _prepare(preds: Sequence[dict], gts: Sequence[Any], conf_threshold: float, max_dets: int) -> list[tuple]:
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction dicts but {len(gts)} ground-truth arrays; need one each")
    images = []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        if "boxes" not in p or "scores" not in p:
            raise KeyError(f"preds[{i}] lacks 'boxes' or 'scores' (has {sorted(p)})")
        boxes = to_numpy(p["boxes"], name=f"preds[{i}]['boxes']").reshape(-1, 4)
        scores = to_numpy(p["scores"], name=f"preds[{i}]['scores']").reshape(-1)
        if boxes.shape[0] != scores.shape[0]:
            raise ValueError(f"preds[{i}]: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
        keep = scores >= conf_threshold
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="mergesort")[:max_dets]
        images.append((boxes[order], scores[order], to_numpy(g, name=f"gts[{i}]").reshape(-1, 4)))
    return images


def _map(images: list[tuple], iou_thresholds: Sequence[float], interpolation: str) -> dict[str, Any]:
    n_gt = int(sum(g.shape[0] for _, _, g in images))
    scores = np.concatenate([s for _, s, _ in images]) if images else np.zeros(0)
    out: dict[str, Any] = {}
    for thr in iou_thresholds:
        tp = [_match(box_iou(b, g), thr) for b, _, g in images]
        tp_all = np.concatenate(tp) if tp else np.zeros(0, dtype=bool)
        out[f"AP@{thr:.2f}"] = average_precision(tp_all, scores, n_gt, interpolation)
    aps = [out[f"AP@{t:.2f}"] for t in iou_thresholds]
    out = {"mAP": float(np.mean(aps)) if n_gt else math.nan, **out}
    out["n_images"], out["n_gt"] = len(images), n_gt
    return out


def map_strict(
    preds: Sequence[dict],
    gts: Sequence[Any],
    *,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    conf_threshold: float = 0.5,
    interpolation: str = "coco101",
    max_dets: int = MAX_DETECTIONS,
) -> dict[str, Any]:
    """mAP over every test image: all GT boxes count (missed positives lower recall) and every detection on an
    image without GT is a false positive.

    preds: one dict per image, ``{"boxes": (n, 4) xyxy, "scores": (n,)}`` (post-NMS; boxes with
    score < conf_threshold are dropped, then at most ``max_dets`` highest-scoring kept). gts: one (m, 4) xyxy
    array per image (m may be 0). Returns ``{"mAP": mean AP over thresholds, "AP@0.40": ..., ...,
    "n_images": images evaluated, "n_gt": GT boxes}``; APs are ``nan`` when there is no GT box at all.
    """
    images = _prepare(preds, gts, conf_threshold, max_dets)
    return _map(images, iou_thresholds, interpolation)


def map_reference(
    preds: Sequence[dict],
    gts: Sequence[Any],
    *,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    conf_threshold: float = 0.5,
    interpolation: str = "coco101",
    max_dets: int = MAX_DETECTIONS,
) -> dict[str, Any]:
    """mAP as the published MGCA/G2D numbers were measured (same inputs as :func:`map_strict`).

    An image counts only if it keeps at least one predicted box with score >= conf_threshold AND has at least
    one GT box. Negatives (and the false positives on them) and positives the model missed entirely (and their
    GT boxes) are silently dropped, which inflates mAP; ``n_images`` says how many images survived.
    """
    images = _prepare(preds, gts, conf_threshold, max_dets)
    images = [im for im in images if im[0].shape[0] and im[2].shape[0]]
    return _map(images, iou_thresholds, interpolation)
