"""DICOM files in the Kaggle (RSNA / SIIM) template with the storage variants a reader must handle.

Template: Secondary Capture Image Storage, Modality CR, 8-bit MONOCHROME2, JPEG Baseline (Pillow encodes the JPEG,
``pydicom.encaps.encapsulate`` wraps it). Variants (``VARIANTS``):

=========  =================================================================================================
jpeg       the template
raw8       8-bit MONOCHROME2, Explicit VR Little Endian (uncompressed)
mono1      8-bit MONOCHROME1: stored = 255 - image (a reader must invert), uncompressed
bits12     16-bit allocated, BitsStored 12, RescaleSlope 1, RescaleIntercept -1024, window centre/width, JPEG 2000
           lossless (pylibjpeg-openjpeg); modality value = stored - 1024, image = stored / 4095
bits16     16-bit allocated, BitsStored 16, RescaleSlope 0.5, RescaleIntercept 0, uncompressed; image = stored / 65535
j2k        8-bit MONOCHROME2, JPEG 2000 lossless
rle        8-bit MONOCHROME2, RLE Lossless
=========  =================================================================================================
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
)

VARIANTS = ("jpeg", "raw8", "mono1", "bits12", "bits16", "j2k", "rle")


def stored_pixels(img: np.ndarray, variant: str) -> np.ndarray:
    """The stored pixel array of a float [0, 1] (H, W) image for ``variant`` (uint8 or uint16)."""
    if variant == "bits12":
        return np.rint(np.clip(img, 0, 1) * 4095).astype(np.uint16)
    if variant == "bits16":
        return np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16)
    img8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return 255 - img8 if variant == "mono1" else img8


def _dataset(meta: dict[str, str], uids: tuple[str, str, str], shape: tuple[int, int]) -> Dataset:
    study, series, sop = uids
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = sop
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.Modality, ds.ConversionType = "CR", "WSD"
    ds.PatientName, ds.PatientID = meta["PatientName"], meta["PatientID"]
    ds.PatientBirthDate = meta.get("PatientBirthDate", "")
    if "OtherPatientNames" in meta:
        ds.OtherPatientNames = meta["OtherPatientNames"]
    ds.PatientSex = meta.get("PatientSex", "O")
    with warnings.catch_warnings():  # "51" is an invalid AS value, as in the real Kaggle files
        warnings.simplefilter("ignore")
        ds.add_new(0x00101010, "AS", meta.get("PatientAge", "51"))
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", meta.get("ViewPosition", "PA")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "1", "1"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, shape[0], shape[1]
    ds.PixelSpacing = [0.14, 0.14]
    ds.PixelRepresentation = 0
    return ds


def _jpeg_baseline(ds: Dataset, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"


def write_dicom(path: Path, img: np.ndarray, *, variant: str, meta: dict[str, str],
                uids: tuple[str, str, str]) -> None:
    """Write float [0, 1] (H, W) ``img`` as a DICOM file in ``variant`` (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"DICOM variant {variant!r}: expected one of {VARIANTS}")
    arr = stored_pixels(img, variant)
    ds = _dataset(meta, uids, arr.shape)
    ds.PhotometricInterpretation = "MONOCHROME1" if variant == "mono1" else "MONOCHROME2"
    bits = 12 if variant == "bits12" else 16 if variant == "bits16" else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = arr.dtype.itemsize * 8, bits, bits - 1
    if variant == "bits12":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "US"
        ds.WindowCenter, ds.WindowWidth = "1023.5", "4096"
    elif variant == "bits16":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.5", "0", "US"
        ds.WindowCenter, ds.WindowWidth = "16383.75", "32768"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "jpeg":
            _jpeg_baseline(ds, arr)
        elif variant in ("bits12", "j2k"):
            ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        elif variant == "rle":
            ds.compress(RLELossless, arr, generate_instance_uid=False)
        else:
            ds.PixelData = arr.tobytes()
            ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        ds.save_as(path, enforce_file_format=True)
