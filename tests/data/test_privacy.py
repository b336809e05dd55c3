"""Planted patient identifiers (DICOM headers, CSV columns) never reach the prepared store or the logs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom import config as dicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.prepare import prepare_dataset

PLANTED = ["Doe^Jane", "Jane", "PID-SECRET-123", "19510203", "Roe^Richard", "PID-SECRET-456", "19620304"]


def write_dicom(path: Path, name: str, pid: str, birth: str) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    with dicom_config.disable_value_validation():
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientAge = name, pid, birth, "51"
        ds.OtherPatientIDs = pid
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 24, 20, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(len(pid)).integers(0, 256, (24, 20), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


class Planted(DatasetFormat):
    """labels.csv: image,patient_id,patient_name,birth_date,label; DICOMs with the same fields in the header."""

    name = "planted"
    label_names = ("Finding",)
    has_boxes = has_masks = True

    def read(self, raw_dir: Path, options: dict) -> ReadResult:
        df = pd.read_csv(raw_dir / "labels.csv", dtype=str)
        index = pd.DataFrame({
            "image_id": df["image"], "path": df["image"] + ".dcm", "patient": df["patient_id"],
            "official_split": None, "Finding": df["label"].astype(float),
            "boxes": [[[1.0, 1.0, 5.0, 5.0]]] * len(df), "shapes": [[]] * len(df), "text": None,
            "patient_name": df["patient_name"], "birth_date": df["birth_date"], "PatientSex": "F", "sex": "F",
        })
        return ReadResult(index, counts={"rows": len(df)})

    def reference_split(self, index: pd.DataFrame, options: dict) -> pd.Series:
        return pd.Series(["train", "train", "train", "valid", "test", "train"][: len(index)], index=index.index)


def all_text(out: Path) -> list[tuple[str, bytes]]:
    """Every file's bytes, plus the decoded parquet cells (compressed pages hide raw strings)."""
    items = [(str(p), p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()]
    for p in out.rglob("*.parquet"):
        df = pd.read_parquet(p)
        items.append((f"{p} (decoded)", (repr(df.columns.tolist()) + repr(df.to_dict("list"))).encode()))
    return items


def assert_absent(out: Path, planted: list[str], logs: str) -> None:
    assert (out / "manifest.parquet").exists()
    for where, blob in [*all_text(out), ("logs", logs.encode())]:
        for secret in planted:
            assert secret.encode() not in blob, f"{secret!r} found in {where}"


@pytest.fixture
def planted_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    people = [("Doe^Jane", "PID-SECRET-123", "19510203"), ("Roe^Richard", "PID-SECRET-456", "19620304")]
    rows = ["image,patient_id,patient_name,birth_date,label"]
    for i in range(6):
        name, pid, birth = people[i % 2]
        write_dicom(raw / f"im{i}.dcm", name, pid, birth)
        rows.append(f"im{i},{pid},{name},{birth},{i % 2}")
    (raw / "labels.csv").write_text("\n".join(rows) + "\n")
    return raw


def test_planted_identifiers_never_reach_store_or_logs(planted_raw, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    prepare_dataset(Planted(), planted_raw, out, size=16, workers=2, chunk_size=2, fractions=(50, 100))
    m = pd.read_parquet(out / "manifest.parquet")
    assert m["patient_hash"].nunique() == 2 and m["patient_hash"].str.len().eq(16).all()  # hashed, not dropped
    assert "sex" in m.columns and "PatientSex" not in m.columns  # any column named patient* is dropped
    captured = capfd.readouterr()
    assert_absent(out, PLANTED, caplog.text + captured.out + captured.err)


def test_salt_changes_the_hash(planted_raw, tmp_path):
    prepare_dataset(Planted(), planted_raw, tmp_path / "a", size=16, workers=1, progress=False, fractions=(50, 100))
    prepare_dataset(Planted(), planted_raw, tmp_path / "b", size=16, workers=1, progress=False, fractions=(50, 100),
                    salt="another secret")
    a, b = (pd.read_parquet(tmp_path / d / "manifest.parquet")["patient_hash"] for d in "ab")
    assert not set(a) & set(b) and (a.factorize()[0] == b.factorize()[0]).all()
    assert b"another secret" not in (tmp_path / "b" / "meta.json").read_bytes()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    gen = pytest.importorskip("cxrbench.data.synthetic")
    root = tmp_path_factory.mktemp("synthetic")
    sizes = {"rsna": 16, "siim": 16, "mimic": 8, "covidx": 12, "ms_cxr": 6}
    return root, gen.generate(root, seed=1, sizes=sizes, image_size=64, datasets=list(sizes))


@pytest.mark.parametrize("name", ["rsna", "siim", "mimic", "covidx"])
def test_generator_planted_identifiers_never_reach_store(synthetic, name, tmp_path, caplog, capfd):
    from cxrbench.registry import DATASETS

    if name not in DATASETS:
        pytest.skip(f"reader {name!r} not registered")
    root, result = synthetic
    planted = [p for p in result["planted_phi"][name] if p]
    assert planted, "the generator planted nothing to look for"
    caplog.set_level(logging.DEBUG)
    out = tmp_path / name
    prepare_dataset(name, root / name, out, size=32, workers=1, progress=True)
    captured = capfd.readouterr()
    assert_absent(out, planted, caplog.text + captured.out + captured.err)


class PlantedPaths(Planted):
    """Patient ids in the image PATHS and ids (as MIMIC, CheXpert and NIH have them): <pid>/im<i>.dcm."""

    name = "planted_paths"

    def read(self, raw_dir: Path, options: dict) -> ReadResult:
        result = super().read(raw_dir, options)
        index = result.index
        index["path"] = [f"{pid}/{iid}.dcm" for pid, iid in zip(index["patient"], index["image_id"], strict=True)]
        index["image_id"] = [f"{pid}_{iid}" for pid, iid in zip(index["patient"], index["image_id"], strict=True)]
        index["study_id"] = [f"{pid}-study" for pid in index["patient"]]
        return result


def test_identifiers_in_paths_stay_out_of_versioned_files(planted_raw, tmp_path, capsys):
    for i in range(6):  # move each DICOM under a folder named by its patient id, then lose one of them
        pid = ["PID-SECRET-123", "PID-SECRET-456"][i % 2]
        (planted_raw / pid).mkdir(exist_ok=True)
        (planted_raw / f"im{i}.dcm").rename(planted_raw / pid / f"im{i}.dcm")
    (planted_raw / "PID-SECRET-456" / "im3.dcm").unlink()
    out = tmp_path / "out"
    summary = prepare_dataset(PlantedPaths(), planted_raw, out, size=16, workers=1, fractions=(50, 100),
                              skip_bad=True, max_skipped_fraction=1.0, progress=False)
    assert summary["skipped"] == 1 and summary["problems"] == {"missing_file": 1}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["problems"][0]["kind"] == "missing_file" and len(meta["problems"][0]["image"]) == 16
    # the console names the file so the user can find it; nothing DVC versions carries the id
    assert "PID-SECRET-456/im3.dcm" in capsys.readouterr().err
    assert_absent(out, ["PID-SECRET-123", "PID-SECRET-456", "SECRET"], "")


def test_mimic_subject_ids_stay_out_of_the_store_with_skipped_images(synthetic, tmp_path):
    root, _ = synthetic
    raw = tmp_path / "mimic"
    shutil.copytree(root / "mimic", raw)
    reports = sorted(raw.rglob("s*.txt"))
    reports[0].unlink()  # a missing report and a missing image: both problems name paths with subject ids
    next(raw.rglob("*.jpg")).unlink()
    out = tmp_path / "out"
    prepare_dataset("mimic", raw, out, size=16, workers=1, skip_bad=True, max_skipped_fraction=1.0, progress=False)
    subjects = {p.name[1:] for p in raw.glob("files/p*/p*")}
    assert subjects and json.loads((out / "meta.json").read_text())["problems"]
    assert_absent(out, sorted(subjects), "")
