"""Zero-shot grounding metrics: pointing game and IoU/Dice of the binarised similarity map.

Similarity maps ``sim`` (N, H, W) are already upsampled to the ground-truth resolution; ``gt`` (N, H, W) bool
masks come from :func:`rasterize_boxes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrbench.metrics._common import check_same_shape, to_numpy


def _inputs(sim: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(sim, name="sim")
    g = to_numpy(gt, dtype=bool, name="gt")
    check_same_shape(s, g, ("sim", "gt"))
    if s.ndim != 3:
        raise ValueError(f"sim has shape {s.shape}; expected (N, H, W)")
    _check_nonempty(g)
    return s, g


def _check_nonempty(g: np.ndarray) -> None:
    empty = np.flatnonzero(g.reshape(g.shape[0], -1).sum(1) == 0)
    if empty.size:
        raise ValueError(f"gt masks {empty[:5].tolist()} are empty; grounding uses positive images only")


def pointing_game(sim: Any, gt: Any) -> float:
    """Fraction of images whose similarity-map argmax (first maximum in row-major order) lies inside the
    ground-truth mask. sim (N, H, W) float, gt (N, H, W) bool, every gt non-empty.

    ``sim`` may also be the map at its native resolution (N, h, w), coarser than ``gt``: the point is then the
    centre of the best cell, ``((i + 0.5) H / h, (j + 0.5) W / w)`` in ``gt`` pixels. An upsampled coarse map
    is flat over each border cell's outer half, so its first argmax is the image edge, not the cell the map
    points at; that is why the task passes the native map."""
    s = to_numpy(sim, name="sim")
    g = to_numpy(gt, dtype=bool, name="gt")
    if s.ndim != 3 or g.ndim != 3 or s.shape[0] != g.shape[0]:
        raise ValueError(f"sim {s.shape} and gt {g.shape}: expected (N, h, w) and (N, H, W) with the same N")
    if s.shape[1] > g.shape[1] or s.shape[2] > g.shape[2]:
        raise ValueError(f"sim {s.shape} is finer than gt {g.shape}; resize sim to the gt resolution first")
    _check_nonempty(g)
    n, h, w = s.shape
    best = np.argmax(s.reshape(n, -1), axis=1)
    rows = np.minimum(((best // w + 0.5) * g.shape[1] / h).astype(np.int64), g.shape[1] - 1)
    cols = np.minimum(((best % w + 0.5) * g.shape[2] / w).astype(np.int64), g.shape[2] - 1)
    return float(g[np.arange(n), rows, cols].mean())


def normalise_minmax(sim: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling of (N, H, W) maps to [0, 1]; a constant map becomes all zeros."""
    lo = sim.min(axis=(1, 2), keepdims=True)
    rng = sim.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(sim - lo, rng, out=np.zeros_like(sim), where=rng > 0)


def map_iou_dice(sim: Any, gt: Any, *, threshold: float = 0.5) -> dict[str, float]:
    """Mean over images of IoU and Dice between the binarised map and the ground truth.

    Convention: each map is min-max normalised to [0, 1] per image and binarised as ``normalised >=
    threshold`` (default 0.5). IoU = |B ∩ G| / |B ∪ G|, Dice = 2 |B ∩ G| / (|B| + |G|); gt is non-empty, so
    both are defined. Returns ``{"IoU", "Dice"}``.
    """
    s, g = _inputs(sim, gt)
    b = normalise_minmax(s) >= threshold
    inter = (b & g).sum(axis=(1, 2)).astype(np.float64)
    union = (b | g).sum(axis=(1, 2))
    total = b.sum(axis=(1, 2)) + g.sum(axis=(1, 2))
    return {"IoU": float(np.mean(inter / union)), "Dice": float(np.mean(2 * inter / total))}


def rasterize_boxes(
    boxes: Any, orig_hw: Sequence[int], out_hw: Sequence[int], *, min_coverage: float = 0.5
) -> np.ndarray:
    """(H_out, W_out) bool mask of the union of xyxy boxes given in ORIGINAL pixel coordinates.

    The boxes are first filled at the original resolution (pixel (r, c) with centre (c + 0.5, r + 0.5) lies
    inside [x1, x2) x [y1, y2)), then the mask is resized to ``out_hw`` by area averaging
    (``F.interpolate(mode="area")``, i.e. the covered fraction of each output pixel) and an output pixel is
    set when that fraction >= ``min_coverage``. boxes: (m, 4) array or a list of 4-sequences; m = 0 gives an
    all-False mask.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    b = to_numpy(boxes, name="boxes").reshape(-1, 4)
    mask = np.zeros((h, w), dtype=np.float32)
    centres_x, centres_y = np.arange(w) + 0.5, np.arange(h) + 0.5
    for x1, y1, x2, y2 in b:
        cols = (centres_x >= x1) & (centres_x < x2)
        rows = (centres_y >= y1) & (centres_y < y2)
        mask[np.ix_(rows, cols)] = 1.0
    if (h, w) == (int(out_hw[0]), int(out_hw[1])):
        return mask > 0
    size = (int(out_hw[0]), int(out_hw[1]))
    resized = F.interpolate(torch.from_numpy(mask)[None, None], size=size, mode="area")
    return resized[0, 0].numpy() >= min_coverage
