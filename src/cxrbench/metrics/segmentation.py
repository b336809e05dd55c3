"""Dice for binary segmentation, in the published (MGCA) reference form and in strict forms.

All functions take PROBABILITIES (N, H, W) in [0, 1] (sigmoid already applied) and binary targets (N, H, W).
Values outside [0, 1] raise an error unless ``from_logits=True`` (then a sigmoid is applied first): the
reference code's bug was computing Dice on raw logits, which this check makes impossible to repeat silently.
A pixel is predicted positive when ``prob > threshold`` (strict, as in the reference); a target pixel is
positive when ``target > 0.5``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxrbench.metrics._common import check_same_shape, to_numpy


def _binarise(prob: Any, target: Any, threshold: float, from_logits: bool) -> tuple[np.ndarray, np.ndarray]:
    p = to_numpy(prob, name="prob")
    g = to_numpy(target, name="target")
    check_same_shape(p, g, ("prob", "target"))
    if p.ndim < 2:
        raise ValueError(f"prob has shape {p.shape}; expected (N, H, W) or (N, ...)")
    if from_logits:
        p = 1.0 / (1.0 + np.exp(-p))
    elif p.size and (np.nanmin(p) < 0.0 or np.nanmax(p) > 1.0):
        raise ValueError(
            f"prob holds values in [{np.nanmin(p):.3g}, {np.nanmax(p):.3g}]; expected probabilities "
            "in [0, 1] "
            "(apply a sigmoid, or pass from_logits=True)"
        )
    n = p.shape[0]
    return (p > threshold).reshape(n, -1), (g > 0.5).reshape(n, -1)


def per_image_reference_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) reference per-image scores from boolean (N, P) masks: empty GT -> 1.0 if the prediction is empty
    else 0.0; otherwise 2 |P ∩ G| / (|P| + |G|)."""
    inter = (pred & gt).sum(1).astype(np.float64)
    p_sum, g_sum = pred.sum(1), gt.sum(1)
    dice = np.where(g_sum > 0, 2.0 * inter / np.maximum(p_sum + g_sum, 1), (p_sum == 0).astype(np.float64))
    return dice


def dice_reference(
    prob: Any, target: Any, *, batch_size: int, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Dice as the published MGCA/G2D numbers were measured.

    Per image: empty ground truth scores 1 if the binarised prediction is empty, else 0; other images score
    standard Dice 2 |P ∩ G| / (|P| + |G|). Images are split into consecutive batches of ``batch_size`` in the
    given order (the last batch may be partial); the result is the mean over batches of the per-batch mean, so
    images of a partial last batch weigh more than the others. prob, target: (N, H, W).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pred, gt = _binarise(prob, target, threshold, from_logits)
    if pred.shape[0] == 0:
        return math.nan
    scores = per_image_reference_dice(pred, gt)
    batch_means = [scores[i : i + batch_size].mean() for i in range(0, scores.shape[0], batch_size)]
    return float(np.mean(batch_means))


def dice_strict(
    prob: Any, target: Any, *, threshold: float = 0.5, mode: str = "image", from_logits: bool = False
) -> float:
    """Dice without the reference quirks. prob, target: (N, H, W).

    ``mode="image"``: mean over images of 2 |P ∩ G| / (|P| + |G|), over every image where P ∪ G is non-empty.
    An image with empty ground truth and empty prediction has undefined (0/0) Dice and is EXCLUDED, so correct
    negatives earn no credit, while any false-positive pixel on a negative image scores 0 and counts. Images
    are weighted equally regardless of batching. ``nan`` when every image is empty-vs-empty.

    ``mode="global"``: 2 sum |P ∩ G| / (sum |P| + sum |G|) pooled over all pixels of all images (large lesions
    dominate); ``nan`` when both sums are 0.
    """
    pred, gt = _binarise(prob, target, threshold, from_logits)
    inter = (pred & gt).sum(1).astype(np.float64)
    denom = (pred.sum(1) + gt.sum(1)).astype(np.float64)
    if mode == "global":
        return float(2.0 * inter.sum() / denom.sum()) if denom.sum() > 0 else math.nan
    if mode != "image":
        raise ValueError(f"mode must be 'image' or 'global', got {mode!r}")
    keep = denom > 0
    return float(np.mean(2.0 * inter[keep] / denom[keep])) if keep.any() else math.nan
