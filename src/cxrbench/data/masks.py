"""Render the shapes of a raw index row into a binary mask at the original resolution.

Pixel convention: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)`` and is inside a rectangle, ellipse or
polygon when its CENTRE ``(c + 0.5, r + 0.5)`` is. Hence a rectangle ``xyxy = (x1, y1, x2, y2)`` fills columns
``ceil(x1 - 0.5) .. ceil(x2 - 0.5) - 1`` (integer corners ``(10, 0, 20, 5)`` fill columns 10..19, rows 0..4).

Shapes (``cxrbench.data.formats._base``): ``{"type": "rle", "rle": str}`` (SIIM, ``rle.rle_decode``),
``{"type": "rect", "xyxy": [...]}``, ``{"type": "ellipse", "xyxy": [...]}`` (the ellipse inscribed in the box:
``((x - cx) / a)**2 + ((y - cy) / b)**2 <= 1``), ``{"type": "polygon", "xy": [x1, y1, x2, y2, ...]}``.
RSNA-style boxes become filled rectangles (``boxes_mask``). Several shapes are OR-ed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from skimage.draw import polygon as sk_polygon

from cxrbench.data.rle import rle_decode


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Indices ``[a, b)`` of pixels whose centres lie in ``[lo, hi)``, clipped to ``[0, n)``."""
    a = max(0, math.ceil(lo - 0.5))
    b = min(n, math.ceil(hi - 0.5))
    return a, max(a, b)


def _rect(mask: np.ndarray, xyxy: Iterable[float]) -> None:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    c0, c1 = _span(min(x1, x2), max(x1, x2), mask.shape[1])
    r0, r1 = _span(min(y1, y2), max(y1, y2), mask.shape[0])
    mask[r0:r1, c0:c1] = 1


def _ellipse(mask: np.ndarray, xyxy: Iterable[float]) -> None:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    a, b = (x2 - x1) / 2, (y2 - y1) / 2
    if a <= 0 or b <= 0:
        return
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    c0, c1 = _span(x1, x2 + 1, mask.shape[1])
    r0, r1 = _span(y1, y2 + 1, mask.shape[0])
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    inside = ((cols[None, :] - cx) / a) ** 2 + ((rows[:, None] - cy) / b) ** 2 <= 1.0
    mask[r0:r1, c0:c1] |= inside.astype(np.uint8)


def _polygon(mask: np.ndarray, xy: Iterable[float]) -> None:
    pts = np.asarray(list(xy), dtype=np.float64)
    if pts.size < 6 or pts.size % 2:
        raise ValueError(f"polygon needs >= 3 (x, y) points, got {pts.size} values")
    pts = pts.reshape(-1, 2)
    # skimage samples integer coordinates; shift by half a pixel to test pixel centres
    rr, cc = sk_polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=mask.shape)
    mask[rr, cc] = 1


def render_shape(mask: np.ndarray, shape: Mapping[str, Any]) -> None:
    """OR one shape dict into ``mask`` (uint8 (H, W)) in place; an unknown type raises ``ValueError``."""
    kind = shape.get("type")
    if kind == "rle":
        h, w = mask.shape
        mask |= rle_decode(str(shape["rle"]), w, h)
    elif kind == "rect":
        _rect(mask, shape["xyxy"])
    elif kind == "ellipse":
        _ellipse(mask, shape["xyxy"])
    elif kind == "polygon":
        _polygon(mask, shape["xy"])
    else:
        raise ValueError(f"unknown shape type {kind!r}; expected rle, rect, ellipse or polygon")


def render_shapes(shapes: Iterable[Mapping[str, Any]] | None, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) mask with values {0, 1}: the union of ``shapes`` (empty/None -> all zeros)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes if shapes is not None else ():
        render_shape(mask, shape)
    return mask


def boxes_mask(boxes: Iterable[Iterable[float]] | None, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) mask of the filled xyxy ``boxes`` (RSNA boxes as a segmentation target)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for box in boxes if boxes is not None else ():
        _rect(mask, box)
    return mask
