"""Decode a DICOM chest X-ray into a float32 image in [0, 1], without ever loading patient fields.

Only the image-pixel, modality-LUT and VOI-LUT elements are read (``dcmread(specific_tags=...)``), so patient
names, ids and birth dates never enter memory, and malformed values elsewhere in the header (RSNA's
``PatientAge`` '51' is not a valid AS value) cannot break decoding. Value validation is off while reading.

Intensity pipeline (PS3.3 C.11), for a stored value ``v``::

    m = slope * v + intercept                       (or the Modality LUT Sequence), ``apply_modality_lut``
    w = VOI LUT / window(m)                         when the header has one, ``apply_voi_lut``
    x = clip((w - lo) / (hi - lo), 0, 1)            lo, hi = the output range of the last step
    x = 1 - x                                       for MONOCHROME1 (0 = white)

``lo, hi`` is the stored range ``[0, 2**BitsStored - 1]`` (signed: ``[-2**(b-1), 2**(b-1) - 1]``) mapped
through the rescale (exactly the range pydicom's windowing maps onto), or the data range of a VOI LUT
Sequence. Values outside are clipped, never wrapped (the reference uint8 code wraps the brightest to 0).

Compressed transfer syntaxes (RLE, JPEG baseline/extended, JPEG lossless, JPEG-LS, JPEG 2000) are decoded by
pydicom's own RLE decoder and the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config as dicom_config
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrbench.data.formats._base import DataFormatError


class ImageDecodeError(DataFormatError):
    """An image file that is missing, truncated or cannot be decoded; the message names the file."""


#: the only elements read from a DICOM file (image pixel, modality LUT and VOI LUT modules)
PIXEL_TAGS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)
HEADER_TAGS = PIXEL_TAGS[:-1]


def _dcmread(path: Path, tags: tuple[str, ...], stop_before_pixels: bool = False) -> pydicom.Dataset:
    if not path.is_file():
        raise ImageDecodeError(f"{path}: image file not found")
    try:
        with dicom_config.disable_value_validation():
            return pydicom.dcmread(
                path, force=True, specific_tags=list(tags), stop_before_pixels=stop_before_pixels
            )
    except Exception as err:  # pydicom raises many kinds on a damaged file
        raise ImageDecodeError(f"{path}: cannot read DICOM header ({type(err).__name__}: {err})") from err


def read_dicom_header(path: str | Path) -> dict[str, Any]:
    """Imaging fields of a DICOM header (no pixels, no patient fields): size, photometric, bits, syntax."""
    path = Path(path)
    ds = _dcmread(path, HEADER_TAGS, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    return {
        "rows": int(ds.get("Rows", 0)),
        "columns": int(ds.get("Columns", 0)),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
    }


def _stored_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Range of the stored values, from BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Output range of the modality LUT (the range pydicom's ``apply_windowing`` maps a window onto)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, 2.0**bits - 1
    else:
        lo, hi = _stored_range(ds)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _lut_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Smallest and largest entry of the first VOI LUT (US or OW LUT data, decoded by pydicom)."""
    nr, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
    entries = apply_voi_lut(np.arange(first, first + (nr or 2**16), dtype=np.int64), ds)
    return float(entries.min()), float(entries.max())


def _to_gray(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """First frame, and RGB -> luminance (ITU-R 601) for colour secondary captures."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 3:
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return arr


def _intensity(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, VOI LUT/window and scaling to [0, 1] (module docstring)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    gray = photometric in ("MONOCHROME1", "MONOCHROME2")
    if gray:
        arr = apply_modality_lut(arr, ds)
        lo, hi = _modality_range(ds)
        if ds.get("VOILUTSequence"):
            arr = apply_voi_lut(np.rint(arr).astype(np.int64), ds)
            lo, hi = _lut_range(ds)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            arr = apply_voi_lut(arr, ds)
    else:
        lo, hi = 0.0, 2.0 ** int(ds.get("BitsStored") or 8) - 1
    if hi == lo:
        raise ValueError(f"degenerate intensity range [{lo}, {hi}]")
    out = (np.asarray(arr, dtype=np.float64) - lo) / (hi - lo)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def read_dicom(path: str | Path) -> np.ndarray:
    """Decode ``path`` into float32 (H, W) in [0, 1], 0 = black (MONOCHROME1 inverted); first frame only.

    Raises ``ImageDecodeError`` naming the file when it is missing, truncated, has no pixel data, or uses a
    transfer syntax no installed decoder handles. Patient fields are never read.
    """
    path = Path(path)
    ds = _dcmread(path, PIXEL_TAGS)
    if "PixelData" not in ds:
        raise ImageDecodeError(f"{path}: no PixelData element (not an image or truncated)")
    try:
        arr = _to_gray(ds.pixel_array, ds)
        return _intensity(arr, ds)
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageDecodeError(
            f"{path}: cannot decode pixels (transfer syntax {syntax}; {type(err).__name__}: {err})"
        ) from err
