"""DICOM decoding: values of hand-built files (bit depths, MONOCHROME1, rescale, windowing, VOI LUT, codecs)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import config as dicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrbench.data.dicom import ImageDecodeError, read_dicom, read_dicom_header


def make_dicom(path, arr, *, photometric="MONOCHROME2", bits_stored=None, signed=False, **elements):
    """Write ``arr`` (uint8/uint16/int16 (H, W)) as a DICOM with planted patient fields and extra ``elements``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    with dicom_config.disable_value_validation():
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-SECRET-123", "19510203"
        ds.PatientAge = "51"  # invalid AS value, as in the RSNA files
    ds.Modality = "CR"
    bits = arr.dtype.itemsize * 8
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_8bit_monochrome2_scaled_by_255_and_brightest_is_one(tmp_path):
    arr = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)
    make_dicom(tmp_path / "a.dcm", arr)
    out = read_dicom(tmp_path / "a.dcm")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)
    assert out[1, 2] == 1.0  # the reference uint8 conversion wraps this pixel to 0


def test_16bit_12_stored_scaled_by_stored_depth_non_square(tmp_path):
    arr = np.array([[0, 1024, 2048, 4095, 10], [5, 6, 7, 8, 9], [4095, 0, 1, 2, 3]], dtype=np.uint16)
    make_dicom(tmp_path / "a.dcm", arr, bits_stored=12)
    out = read_dicom(tmp_path / "a.dcm")
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out, arr / 4095.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    arr = np.array([[0, 4095], [1000, 3000]], dtype=np.uint16)
    make_dicom(tmp_path / "a.dcm", arr, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm"), 1.0 - arr / 4095.0, atol=1e-6)


def test_signed_16bit_range(tmp_path):
    arr = np.array([[-32768, 0, 32767]], dtype=np.int16)
    make_dicom(tmp_path / "a.dcm", arr, signed=True)
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm"), [[0.0, 32768 / 65535, 1.0]], atol=1e-6)


def test_rescale_then_linear_window(tmp_path):
    # m = 2 v - 1000; window c=0, w=1000 (LINEAR: c' = -0.5, w' = 999); output ((m - c') / w' + 0.5) clipped
    arr = np.array([[250, 500, 750, 0]], dtype=np.uint16)
    make_dicom(
        tmp_path / "a.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0,
        WindowWidth=1000,
    )
    expected = [0.0, (0 + 0.5) / 999 + 0.5, 1.0, 0.0]
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm")[0], expected, atol=1e-6)


def test_rescale_alone_keeps_the_stored_range(tmp_path):
    arr = np.array([[0, 1000, 4095]], dtype=np.uint16)
    make_dicom(tmp_path / "a.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm"), arr / 4095.0, atol=1e-6)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence(tmp_path, vr):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])  # LUTDescriptor: 4 entries, first mapped value 0, 16 bit
    lut = [0, 100, 200, 400]
    item.add_new(0x00283006, vr, lut if vr == "US" else np.array(lut, "<u2").tobytes())
    arr = np.array([[0, 1, 2, 3, 10]], dtype=np.uint8)
    make_dicom(tmp_path / "a.dcm", arr, VOILUTSequence=[item])
    # values past the LUT take its last entry; the LUT range [0, 400] maps to [0, 1]
    np.testing.assert_allclose(read_dicom(tmp_path / "a.dcm"), [[0, 0.25, 0.5, 1.0, 1.0]], atol=1e-7)


def test_patient_fields_are_not_read_and_bad_age_does_not_choke(tmp_path):
    arr = np.zeros((4, 6), dtype=np.uint8)
    make_dicom(tmp_path / "a.dcm", arr)
    header = read_dicom_header(tmp_path / "a.dcm")
    assert header == {"rows": 4, "columns": 6, "photometric": "MONOCHROME2", "bits_stored": 8,
                      "transfer_syntax": ExplicitVRLittleEndian}
    from cxrbench.data.dicom import PIXEL_TAGS, _dcmread

    ds = _dcmread(tmp_path / "a.dcm", PIXEL_TAGS)
    assert "PatientName" not in ds and "PatientID" not in ds and "PatientBirthDate" not in ds


def _pattern(h=16, w=24, bits=16):
    yy, xx = np.mgrid[0:h, 0:w]
    top = 4095 if bits == 16 else 255
    return ((xx * 37 + yy * 101) % (top + 1)).astype(np.uint16 if bits == 16 else np.uint8)


def test_rle_lossless_roundtrip(tmp_path):
    arr = _pattern()
    ds = make_dicom(tmp_path / "plain.dcm", arr, bits_stored=12)
    ds.compress(RLELossless, arr)
    ds.save_as(tmp_path / "rle.dcm")
    assert read_dicom_header(tmp_path / "rle.dcm")["transfer_syntax"] == RLELossless
    np.testing.assert_array_equal(read_dicom(tmp_path / "rle.dcm"), read_dicom(tmp_path / "plain.dcm"))


def test_jpeg2000_lossless_roundtrip(tmp_path):
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder

    if not JPEG2000LosslessEncoder.is_available:
        pytest.skip("no JPEG 2000 encoder (pylibjpeg-openjpeg) installed")
    arr = _pattern(64, 80)  # openjpeg's default 6 resolutions need >= 32 px
    ds = make_dicom(tmp_path / "plain.dcm", arr, bits_stored=12)
    ds.compress(JPEG2000Lossless, arr)
    ds.save_as(tmp_path / "j2k.dcm")
    np.testing.assert_allclose(read_dicom(tmp_path / "j2k.dcm"), arr / 4095.0, atol=1e-6)


def test_jpeg_baseline_encapsulated_like_rsna(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48]
    arr = (xx * 5 + yy * 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    ds = make_dicom(tmp_path / "plain.dcm", arr)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpg.dcm")
    out = read_dicom(tmp_path / "jpg.dcm")
    reference = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
    assert out.shape == (32, 48)
    np.testing.assert_allclose(out, reference, atol=2 / 255)  # two JPEG decoders may differ by one level
    np.testing.assert_allclose(out, arr / 255.0, atol=6 / 255)


def test_lossless_jpeg_and_jpeg_ls_decoders_are_installed():
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder, JPEGLSLosslessDecoder

    assert JPEGLosslessSV1Decoder.is_available and JPEGLSLosslessDecoder.is_available


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.dcm"):
        read_dicom(tmp_path / "missing.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(ImageDecodeError, match="junk.dcm"):
        read_dicom(tmp_path / "junk.dcm")
    make_dicom(tmp_path / "full.dcm", _pattern(64, 64))
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 3000])
    with pytest.raises(ImageDecodeError, match="cut.dcm"):
        read_dicom(tmp_path / "cut.dcm")


def test_pydicom_reads_planted_fields_back(tmp_path):
    """Guard for the privacy tests: the planted fields really are in the file."""
    make_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint8))
    with dicom_config.disable_value_validation():
        ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "PID-SECRET-123"


def test_generator_variants_decode_to_the_rendered_image(tmp_path):
    """Every DICOM variant the synthetic generator writes decodes back to its float image (quantisation apart)."""
    writer = pytest.importorskip("cxrbench.data.synthetic.dicom_writer")
    yy, xx = np.mgrid[0:48, 0:40]
    img = (0.2 + 0.6 * xx / 39 * (yy / 47)).astype(np.float32)
    uids = (generate_uid(), generate_uid(), generate_uid())
    # 12/16 bit: rounding plus the half-level offsets of the DICOM LINEAR window function (c - 0.5, w - 1)
    tolerance = {"jpeg": 0.03, "bits12": 1 / 4095 + 1e-6, "bits16": 2 / 65535 + 1e-6}
    for variant in writer.VARIANTS:
        path = tmp_path / f"{variant}.dcm"
        writer.write_dicom(path, img, variant=variant, meta={"PatientName": "Doe^Jane", "PatientID": "P1"}, uids=uids)
        err = np.abs(read_dicom(path) - img).max()
        assert err <= tolerance.get(variant, 0.5 / 255 + 1e-6), (variant, err)
