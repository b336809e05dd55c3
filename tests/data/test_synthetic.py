"""Synthetic generator: determinism, the 25 diseases, formats of all 8 layouts, DICOM variants, learnability."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from cxrbench.data.synthetic import generate
from cxrbench.data.synthetic.dicom_writer import VARIANTS
from cxrbench.data.synthetic.findings import make_finding, sample_case
from cxrbench.data.synthetic.latent import KINDS, Case, case_rng, sample_anatomy
from cxrbench.data.synthetic.layouts_kaggle import kaggle_items
from cxrbench.data.synthetic.render import box_of, instance_masks, render, to_uint8
from cxrbench.data.synthetic.reports import CHEXPERT_LABELS, write_report

SIZES = {"mimic": 24, "chexpert": 40, "nih": 40, "rsna": 21, "siim": 21, "covidx": 24, "object_cxr": 20, "ms_cxr": 10}
S = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, generate(root, seed=3, sizes=SIZES, image_size=S)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _decode_rle(rle: str, w: int, h: int) -> np.ndarray:
    """Independent SIIM decoder (column-major, gaps relative to the end of the previous run)."""
    flat = np.zeros(w * h, np.uint8)
    v = [int(t) for t in rle.split()]
    pos = 0
    for gap, n in zip(v[::2], v[1::2], strict=True):
        pos += gap
        flat[pos:pos + n] = 1
        pos += n
    return flat.reshape(w, h).T


def test_determinism(tmp_path):
    kw = {"sizes": {"mimic": 4, "siim": 8, "covidx": 6}, "image_size": 48, "datasets": ["mimic", "siim", "covidx"]}
    generate(tmp_path / "a", seed=1, **kw)
    generate(tmp_path / "b", seed=1, **kw)
    generate(tmp_path / "c", seed=2, **kw)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) > 30
    assert sum(x.endswith(".dcm") for x in a) == 8 and "mimic/mimic-cxr-2.0.0-split.csv.gz" in a
    assert a["covidx/train_COVIDx9A.txt"] != c["covidx/train_COVIDx9A.txt"]
    assert set(a) != set(c)  # ids differ with the seed
    assert not list((tmp_path / "a").glob(".*"))  # no temp dirs left


def test_all_25_diseases_and_layout_dirs(synth):
    root, summary = synth
    d = summary["diseases"]
    assert len(d) == 25 and min(d.values()) > 0, {k: v for k, v in d.items() if not v}
    assert sorted(p.name for p in root.iterdir()) == sorted(SIZES)
    assert summary["datasets"]["nih"]["images"] == 40 and summary["datasets"]["rsna"]["images"] == 21


def test_mimic_reports_format_and_labels(synth):
    root, _ = synth
    reports = sorted((root / "mimic/files").rglob("s*.txt"))
    chex = pd.read_csv(root / "mimic/mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(chex.columns) == ["subject_id", "study_id", *CHEXPERT_LABELS] and len(chex) == len(reports)
    kinds = {"neither": 0, "addendum": 0}
    for p in reports:
        text = p.read_text()
        lines = text.rstrip("\n").split("\n")
        assert all(ln.startswith(" ") and len(ln) <= 79 for ln in lines), p
        assert "FINAL REPORT" in lines[0] or "FINAL ADDENDUM" in lines[0]
        heads = re.findall(r"\n ([A-Z ()/,-]+):\s", text)
        assert {"EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON"} <= set(heads)
        kinds["neither"] += not ({"FINDINGS", "IMPRESSION"} & set(heads))
        kinds["addendum"] += "ADDENDUM" in heads
        assert "___" in text
        study = int(p.stem[1:])
        row = chex[chex.study_id == study].iloc[0]
        flat = " ".join(text.split())
        if row["Pleural Effusion"] == 1.0:
            assert "pleural effusion" in flat.lower()
        if row["Pneumothorax"] == 0.0:
            assert re.search(r"(No|no|No evidence of) pneumothorax", flat)
        if row["Pneumonia"] == -1.0:
            assert re.search(r"pneumonia (cannot be excluded|\.)|Possible .*pneumonia", flat)
        if not ({"FINDINGS", "IMPRESSION"} & set(heads)):
            assert row[list(CHEXPERT_LABELS)].isna().all()
    assert kinds["neither"] >= 1 and kinds["addendum"] >= 1
    assert (chex[list(CHEXPERT_LABELS[:8])] == -1.0).any().any()
    meta = pd.read_csv(root / "mimic/mimic-cxr-2.0.0-metadata.csv.gz")
    assert {"PA", "AP", "LATERAL"} <= set(meta.ViewPosition.dropna())
    assert meta.dicom_id.str.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}").all()
    assert meta.subject_id.astype(str).str.fullmatch(r"1\d{7}").all()
    assert meta.study_id.astype(str).str.fullmatch(r"5\d{7}").all()
    r = meta.iloc[0]
    s = str(r.subject_id)
    im = Image.open(root / f"mimic/files/p{s[:2]}/p{s}/s{r.study_id}/{r.dicom_id}.jpg")
    assert im.size == (r.Columns, r.Rows)


def test_report_labels_planted_cases():
    rng = case_rng(0, "t", 0)
    anat = sample_anatomy(rng)
    fs = (make_finding(rng, anat, "effusion", side="right", severity=1),
          make_finding(rng, anat, "pneumonia", certainty="uncertain"),
          make_finding(rng, anat, "pneumothorax", certainty="absent"))
    text, lab = write_report(fs, rng, exam="CHEST (PA AND LAT)", layout="full", addendum=False)
    assert "small right pleural effusion" in text.lower()
    assert re.search(r"Possible|cannot be excluded|may represent", text)
    assert re.search(r"No (evidence of )?pneumothorax|There is no pneumothorax", text)
    assert lab["Pleural Effusion"] == 1.0 and lab["Pneumonia"] == -1.0 and lab["Pneumothorax"] == 0.0
    assert lab["Lung Opacity"] == -1.0 and math.isnan(lab["No Finding"]) and math.isnan(lab["Edema"])
    _, lab2 = write_report(fs[2:], rng, exam="X", layout="impression", addendum=True)
    assert lab2["No Finding"] == 1.0 and lab2["Pneumothorax"] == 0.0
    _, lab3 = write_report(fs, rng, exam="X", layout="neither", addendum=False)
    assert all(math.isnan(v) for v in lab3.values())


def test_chexpert_and_nih_tables(synth):
    root, _ = synth
    top = root / "chexpert/CheXpert-v1.0-small"
    tr, va = pd.read_csv(top / "train.csv"), pd.read_csv(top / "valid.csv")
    assert tr.shape[1] == 19 and list(tr.columns)[:5] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert all((root / "chexpert" / p).exists() for p in tr.Path)
    assert tr.Path.str.startswith("CheXpert-v1.0-small/train/").all()
    comp = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    single = tr[(tr["Frontal/Lateral"] == "Frontal") & ((tr[comp] == 1.0).sum(axis=1) == 1)]
    assert set(comp) <= set(single[comp].idxmax(axis=1))
    assert tr[comp].isna().any().any() and (tr[comp] == -1.0).any().any() and not va[comp].isna().any().any()
    nih = root / "nih"
    lines = (nih / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    assert all(len(ln.split(",")) == 11 for ln in lines)
    assert any("Pleural_Thickening" in ln for ln in lines) and any(",No Finding," in ln for ln in lines)
    assert any("|" in ln.split(",")[1] for ln in lines[1:])
    bb = (nih / "BBox_List_2017.csv").read_text().splitlines()
    assert bb[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,," and all(ln.endswith(",,,") for ln in bb)
    pid = lambda names: {n.split("_")[0] for n in names}  # noqa: E731
    tv, te = (nih / "train_val_list.txt").read_text().split(), (nih / "test_list.txt").read_text().split()
    assert len(tv) + len(te) == 40 and te and not pid(tv) & pid(te)
    im = Image.open(nih / "images" / tv[0])
    assert im.mode == "L" and im.size == (S, S)


def test_rsna_ids_boxes_and_dicom(synth):
    root, summary = synth
    lab = pd.read_csv(root / "rsna/stage_2_train_labels.csv")
    files = {p.stem for p in (root / "rsna/stage_2_train_images").glob("*.dcm")}
    assert set(lab.patientId) == files and len(files) == 21
    assert lab.loc[lab.Target == 0, ["x", "y", "width", "height"]].isna().all().all()
    items = {it.image_id: it for it in kaggle_items(3, "rsna", 21, S)}
    for pid, g in lab[lab.Target == 1].groupby("patientId"):
        it = items[pid]
        want = sorted(box_of(m) for m in it.masks("pneumonia"))
        got = sorted((int(r.x), int(r.y), int(r.x + r.width), int(r.y + r.height)) for r in g.itertuples())
        assert got == want and max(b[2] for b in got) <= it.w
        ds = pydicom.dcmread(root / f"rsna/stage_2_train_images/{pid}.dcm")
        assert ds.PatientID == pid and str(ds.PatientName) == pid and ds.Modality == "CR"
    assert summary["datasets"]["rsna"]["positive"] == lab[lab.Target == 1].patientId.nunique()


def test_siim_rle_matches_planted_masks(synth):
    root, _ = synth
    text = (root / "siim/train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n") and ",-1\n" in text and ", -1\n" in text
    rows = [ln.split(",", 1) for ln in text.splitlines()[1:]]
    by_id: dict[str, list[str]] = {}
    for i, r in rows:
        by_id.setdefault(i, []).append(r.strip())
    assert max(len(v) for v in by_id.values()) >= 2  # multi-instance
    for it in kaggle_items(3, "siim", 21, S):
        planted = it.masks("pneumothorax")
        rles = by_id[it.image_id]
        if not planted:
            assert rles == ["-1"]
            continue
        got = np.zeros((it.h, it.w), np.uint8)
        for r in rles:
            got |= _decode_rle(r, it.w, it.h)
        assert np.array_equal(got, np.logical_or.reduce(planted).astype(np.uint8))
        path = root / "siim/dicom-images-train" / it.uids[0] / it.uids[1] / f"{it.image_id}.dcm"
        assert pydicom.dcmread(path, stop_before_pixels=True).Rows == it.h


def test_dicom_variants_decode(synth):
    root, summary = synth
    items = kaggle_items(3, "siim", 21, S)
    seen = set()
    for it in items:
        ds = pydicom.dcmread(root / "siim/dicom-images-train" / it.uids[0] / it.uids[1] / f"{it.image_id}.dcm")
        px = ds.pixel_array.astype(np.int64)
        img8 = to_uint8(render(it.case, it.h, it.w)).astype(np.int64)
        assert px.shape == (it.h, it.w)
        seen.add(it.variant)
        if it.variant == "mono1":
            assert ds.PhotometricInterpretation == "MONOCHROME1" and np.array_equal(255 - px, img8)
        elif it.variant == "bits12":
            assert ds.BitsStored == 12 and float(ds.RescaleIntercept) == -1024 and px.max() <= 4095
            assert np.abs(px / 4095 * 255 - img8).max() <= 1
        elif it.variant == "bits16":
            assert ds.BitsStored == 16 and np.abs(px / 65535 * 255 - img8).max() <= 1
        elif it.variant == "jpeg":
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and np.abs(px - img8).mean() < 3
        else:
            assert np.array_equal(px, img8)
        assert str(ds.PatientName).startswith("Doe^") and str(ds.PatientName) in summary["planted_phi"]["siim"]
    assert seen == set(VARIANTS) and any(it.w != it.h for it in items)


def test_covidx_and_object_cxr(synth):
    root, _ = synth
    cov = root / "covidx"
    exts, modes, sizes = set(), set(), set()
    for split in ("train", "test"):
        for ln in (cov / f"{split}_COVIDx9A.txt").read_text().splitlines():
            f = ln.split(" ")
            assert len(f) == 4 and f[2] in ("normal", "pneumonia", "COVID-19"), ln
            im = Image.open(cov / split / f[1])
            exts.add(Path(f[1]).suffix)
            modes.add(im.mode)
            sizes.add(im.size)
    assert exts == {".png", ".jpg", ".jpeg"} and modes == {"L", "RGB"} and len(sizes) > 5
    obj = root / "object_cxr"
    pat = re.compile(r"(0( \d+){4}|1( \d+){4}|2( \d+ \d+){3,})(;(0( \d+){4}|1( \d+){4}|2( \d+ \d+){3,}))*")
    n_pos = n_neg = 0
    for split in ("train", "dev"):
        df = pd.read_csv(obj / f"{split}.csv", keep_default_na=False, dtype=str)
        assert list(df.columns) == ["image_name", "annotation"]
        for name, ann in df.itertuples(index=False):
            assert re.fullmatch(r"\d{5}\.jpg", name) and (obj / split / name).exists()
            if ann:
                assert pat.fullmatch(ann), ann
                w, h = Image.open(obj / split / name).size
                xs = [int(v) for o in ann.split(";") for v in o.split()[1::2]]
                assert min(xs) >= -2 and max(xs) <= w + 2
            n_pos += bool(ann)
            n_neg += not ann
    assert n_pos >= 5 and n_neg >= 5


def test_ms_cxr_boxes_inside_mimic_images(synth):
    root, _ = synth
    ms = pd.read_csv(root / "ms_cxr/MS_CXR_Local_Alignment_v1.1.0.csv")
    assert list(ms.columns) == ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                                "image_width", "image_height", "split"]
    assert len(ms) >= 5 and set(ms.category_name) <= {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                      "Lung Opacity", "Pleural Effusion", "Pneumonia", "Pneumothorax"}
    for r in ms.itertuples():
        w, h = Image.open(root / "mimic" / r.path).size
        assert (w, h) == (r.image_width, r.image_height)
        assert r.x >= 0 and r.y >= 0 and r.w > 0 and r.h > 0 and r.x + r.w <= w and r.y + r.h <= h
    meta = pd.read_csv(io.BytesIO(gzip.decompress((root / "mimic/mimic-cxr-2.0.0-metadata.csv.gz").read_bytes())))
    assert set(ms.dicom_id) <= set(meta.dicom_id)


@pytest.mark.parametrize("kind", list(KINDS))
def test_finding_region_differs_measurably(kind):
    case = sample_case(case_rng(0, "learn", KINDS.index(kind)), forced=[kind])
    with_f, without = render(case, 96, 96), render(case.without(kind), 96, 96)
    f = next(f for f in case.findings if f.kind == kind)
    mask = np.logical_or.reduce(instance_masks(case, f, 96, 96))
    assert mask.sum() >= 3
    inside = np.abs(with_f - without)[mask].mean()
    outside = np.abs(with_f - without)[~mask].mean()
    assert inside > 0.04 and inside > 3 * outside, (inside, outside)


def test_render_is_deterministic_and_fast_enough():
    case = sample_case(case_rng(5, "x", 1), forced=["pneumonia", "effusion"])
    assert np.array_equal(render(case, 64, 80), render(case, 64, 80))
    assert render(case, 64, 80).dtype == np.float32
    assert render(Case(case.anatomy, (), "LATERAL"), 32, 32).shape == (32, 32)
