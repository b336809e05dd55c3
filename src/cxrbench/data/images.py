"""Load any chest X-ray file as float32 [0, 1] and fit it into the square prepared store.

Store geometry (one rule for images, masks and boxes). An original image of ``h x w`` pixels is scaled by
``scale = S / max(h, w)`` to ``round(h * scale) x round(w * scale)`` (the longest side becomes exactly S),
then placed in an ``S x S`` zero canvas at ``(pad_y, pad_x)``:

- ``padding="center"`` (default): ``pad_x = (S - new_w) // 2``, ``pad_y = (S - new_h) // 2``;
- ``padding="topleft"``: ``pad_x = pad_y = 0`` (padding right and bottom).

A point at continuous original pixel coordinates ``(x, y)`` (pixel ``i`` spans ``[i, i + 1)``) lands at
``(x * scale + pad_x, y * scale + pad_y)`` in the store; boxes are mapped the same way and back with
``(x' - pad_x) / scale``. The resize uses exactly ``scale`` on both axes (OpenCV with ``fx = fy = scale``):
area averaging when shrinking, bilinear when enlarging, nearest neighbour for masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cxrbench.data.dicom import ImageDecodeError, read_dicom

__all__ = [
    "Geometry",
    "ImageDecodeError",
    "fit_geometry",
    "load_image",
    "map_boxes",
    "resize_mask",
    "resize_pad",
]

PADDINGS = ("center", "topleft")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Geometry:
    """Where an ``orig_h x orig_w`` image sits in the ``size x size`` store (module docstring)."""

    orig_h: int
    orig_w: int
    size: int
    scale: float
    new_h: int
    new_w: int
    pad_y: int
    pad_x: int


def fit_geometry(h: int, w: int, size: int, padding: str = "center") -> Geometry:
    """Geometry of an ``h x w`` image in a ``size`` store: ``scale = size / max(h, w)``, padding as above."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"image and store sizes must be positive, got h={h} w={w} size={size}")
    scale = size / max(h, w)
    new_h = min(size, max(1, round(h * scale)))
    new_w = min(size, max(1, round(w * scale)))
    if padding == "center":
        pad_y, pad_x = (size - new_h) // 2, (size - new_w) // 2
    else:
        pad_y = pad_x = 0
    return Geometry(h, w, size, scale, new_h, new_w, pad_y, pad_x)


def _pil_to_float(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop alpha without compositing tricks
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def load_image(path: str | Path) -> np.ndarray:
    """float32 (H, W) in [0, 1] from a DICOM (``.dcm``, see ``cxrbench.data.dicom``) or any PIL format.

    8-bit images are divided by 255, 16-bit by 65535; RGB is converted to luminance (PIL ``L``: ITU-R 601).
    A missing, truncated or undecodable file raises ``ImageDecodeError`` naming it.
    """
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return read_dicom(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            arr = _pil_to_float(img)
    except Exception as err:
        raise ImageDecodeError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return arr


def _place(resized: np.ndarray, g: Geometry, dtype: type) -> np.ndarray:
    out = np.zeros((g.size, g.size), dtype=dtype)
    h, w = min(resized.shape[0], g.new_h), min(resized.shape[1], g.new_w)
    out[g.pad_y : g.pad_y + h, g.pad_x : g.pad_x + w] = resized[:h, :w]
    return out


def _resize(arr: np.ndarray, g: Geometry, interpolation: int) -> np.ndarray:
    if g.scale == 1.0:
        return arr
    return cv2.resize(arr, (0, 0), fx=g.scale, fy=g.scale, interpolation=interpolation)


def resize_pad(img: np.ndarray, size: int, padding: str = "center") -> tuple[np.ndarray, Geometry]:
    """float [0, 1] (H, W) -> uint8 (size, size) store image (``round(255 * x)``, clipped), geometry."""
    g = fit_geometry(img.shape[0], img.shape[1], size, padding)
    interp = cv2.INTER_AREA if g.scale < 1 else cv2.INTER_LINEAR
    resized = _resize(np.ascontiguousarray(img, dtype=np.float32), g, interp)
    as_u8 = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    return _place(as_u8, g, np.uint8), g


def resize_mask(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """uint8 (orig_h, orig_w) mask -> uint8 (size, size), nearest neighbour, same geometry as the image."""
    if mask.shape != (g.orig_h, g.orig_w):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({g.orig_h}, {g.orig_w})")
    resized = _resize(np.ascontiguousarray(mask, dtype=np.uint8), g, cv2.INTER_NEAREST)
    return _place(resized, g, np.uint8)


def map_boxes(boxes: np.ndarray, g: Geometry) -> np.ndarray:
    """(m, 4) xyxy original pixels -> (m, 4) float32 store pixels ``x * scale + pad_x``, clipped to [0, S]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = b * g.scale + np.array([g.pad_x, g.pad_y, g.pad_x, g.pad_y], dtype=np.float64)
    return np.clip(out, 0.0, g.size).astype(np.float32)
