"""CheXpert v1.0-small and NIH ChestX-ray14 in their download layouts."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from ._io import csv_text, save_image, write_text
from .findings import PROFILES, sample_case
from .latent import Case, case_rng, sample_anatomy, with_demographics
from .render import box_of, instance_masks, render, to_uint8
from .reports import chexpert_labels

CHEXPERT_COLS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                 "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                 "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
COMPETITION = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
               "edema": "Edema", "effusion": "Pleural Effusion"}
NIH_NAMES = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "effusion": "Effusion",
             "infiltration": "Infiltration", "mass": "Mass", "nodule": "Nodule", "pneumonia": "Pneumonia",
             "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "edema": "Edema",
             "emphysema": "Emphysema", "fibrosis": "Fibrosis", "pleural_thickening": "Pleural_Thickening",
             "hernia": "Hernia"}
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_BBOX_NAME = {"Infiltration": "Infiltrate"}
_BBOX_KINDS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax")
#: every k-th patient's recorded metadata is damaged as in the real tables (the image keeps its true sex and age):
#: CheXpert Sex "Unknown" and Age 0 (unknown); NIH ages above 400 (the entry errors of Data_Entry_2017.csv)
UNKNOWN_SEX_EVERY, UNKNOWN_AGE_EVERY, NIH_BAD_AGE_EVERY = 53, 59, 97


def _recorded_chexpert(pid: int, sex: str, age: int) -> tuple[str, int]:
    return ("Unknown" if pid % UNKNOWN_SEX_EVERY == 0 else sex), (0 if pid % UNKNOWN_AGE_EVERY == 0 else age)


def _chexpert_case(rng, anat, k: int, valid: bool) -> Case:
    """Every other early case is a single competition-label positive (for the 5x200 exclusion)."""
    comp = tuple(COMPETITION)
    if k % 2 == 0:
        return sample_case(rng, forced=[comp[(k // 2) % 5]], negations=2, anatomy=anat)
    return sample_case(rng, profile=PROFILES["report"], uncertain_p=0.0 if valid else 0.2, negations=3, anatomy=anat)


def write_chexpert(out: Path, seed: int, n: int, image_size: int, n_test: int | None = None) -> dict:
    """``n`` images (about 10% in valid.csv, the protocol's test split; ``n_test`` images if given) under
    ``out/CheXpert-v1.0-small``."""
    top = "CheXpert-v1.0-small"
    n_valid = max(1, min(max(8, n // 10), n // 4)) if n_test is None else _test_count(n, n_test, "chexpert")
    rows: dict[str, list] = {"train": [], "valid": []}
    counts, k, pid = Counter(), 0, 0
    while sum(len(r) for r in rows.values()) < n or (n_test is not None and len(rows["valid"]) < n_valid):
        split = "train" if len(rows["train"]) < n - n_valid else "valid"
        pid += 1
        rng = case_rng(seed, "chexpert", pid)
        anat, sex, age = sample_anatomy(rng), ["Male", "Female"][int(rng.integers(2))], int(rng.integers(18, 91))
        anat, (sex, age) = with_demographics(anat, sex == "Female", age), _recorded_chexpert(pid, sex, age)
        for st in range(1, int(rng.integers(1, 3)) + 1):
            case = replace(_chexpert_case(rng, anat, k, split == "valid"), view="AP" if rng.random() < 0.7 else "PA")
            k += 1
            labels = chexpert_labels(case.findings)
            if split == "valid":
                labels = {c: (0.0 if math.isnan(v) or v < 0 else v) for c, v in labels.items()}
            counts.update(c for c, v in labels.items() if v == 1.0)
            views = [("Frontal", case.view)] + ([("Lateral", "")] if rng.random() < 0.3 else [])
            for vi, (fl, appa) in enumerate(views, 1):
                rel = f"{top}/{split}/patient{pid:05d}/study{st}/view{vi}_{fl.lower()}.jpg"
                c = case if fl == "Frontal" else Case(anat, (), "LATERAL", case.seed + 1)
                save_image(out / rel, to_uint8(render(c, image_size, int(round(image_size * 0.82)))))
                rows[split].append([rel, sex, age, fl, appa] + [labels[c] for c in CHEXPERT_COLS[5:]])
    for split, r in rows.items():
        write_text(out / top / f"{split}.csv", csv_text(CHEXPERT_COLS, r))
    return {"train": len(rows["train"]), "valid": len(rows["valid"]), "patients": pid,
            "positives": dict(sorted(counts.items()))}


def _nih_test(pid: int, n_in_test: int, n_test: int | None) -> bool:
    """Whether patient ``pid``'s images go to the official test list (whole patients)."""
    if n_test is None:
        return pid % 4 == 0
    return pid % 2 == 0 and n_in_test < n_test


def _nih_boxes(case: Case, name: str, size: int) -> list[list]:
    """BBox_List rows (x, y, w, h floats) for the box-annotated findings of one image."""
    rows = []
    for f in case.visible():
        if f.kind in _BBOX_KINDS:
            m = np.logical_or.reduce(instance_masks(case, f, size, size))
            b = box_of(m)
            if b is not None:
                label = _BBOX_NAME.get(NIH_NAMES[f.kind], NIH_NAMES[f.kind])
                rows.append([name, label, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), "", "",
                             ""])
    return rows


def _test_count(n: int, n_test: int, name: str) -> int:
    if not 0 < n_test < n:
        raise ValueError(f"synthetic.test_sizes.{name} = {n_test}: expected 1..{n - 1} (synthetic.sizes.{name} = {n})")
    return n_test


def write_nih(out: Path, seed: int, n: int, image_size: int, n_test: int | None = None) -> dict:
    """``n`` 8-bit square PNGs with Data_Entry_2017.csv, BBox_List_2017.csv and patient-disjoint split lists: every
    4th patient in the test list, or (``n_test`` given) every other patient until it holds ``n_test`` images."""
    if n_test is not None:
        _test_count(n, n_test, "nih")
    entries, boxes, lists = [], [], {"train_val": [], "test": []}
    counts, pid, kinds = Counter(), 0, tuple(NIH_NAMES)
    while len(entries) < n:
        pid += 1
        rng = case_rng(seed, "nih", pid)
        anat, sex, age = sample_anatomy(rng), "MF"[int(rng.integers(2))], int(rng.integers(1, 91))
        anat, age = with_demographics(anat, sex == "F", age), age + (400 if pid % NIH_BAD_AGE_EVERY == 0 else 0)
        to_test = _nih_test(pid, len(lists["test"]), n_test)
        for fu in range(min(int(rng.integers(1, 5)), n - len(entries))):
            k = len(entries)
            forced = [kinds[k % len(kinds)]] if k < 2 * len(kinds) else []
            case = sample_case(rng, profile=PROFILES["nih"], forced=forced, anatomy=anat,
                               view="PA" if rng.random() < 0.6 else "AP")
            name = f"{pid:08d}_{fu:03d}.png"
            save_image(out / "images" / name, to_uint8(render(case, image_size, image_size)))
            labels = sorted({NIH_NAMES[f.kind] for f in case.findings if f.kind in NIH_NAMES})
            counts.update(labels or ["No Finding"])
            ow, oh = int(rng.integers(2400, 3000)), int(rng.integers(2400, 3000))
            entries.append([name, "|".join(labels) or "No Finding", fu, pid, age, sex, case.view, ow, oh,
                            0.143, 0.143])
            if rng.random() < 0.4:
                boxes.extend(_nih_boxes(case, name, image_size))
            lists["test" if to_test else "train_val"].append(name)
    write_text(out / "Data_Entry_2017.csv", csv_text(NIH_HEADER, entries))
    write_text(out / "BBox_List_2017.csv", csv_text(BBOX_HEADER, boxes))
    for key, names in lists.items():
        write_text(out / f"{key}_list.txt", "".join(f"{x}\n" for x in names))
    return {"images": len(entries), "patients": pid, "boxes": len(boxes), "train_val": len(lists["train_val"]),
            "test": len(lists["test"]), "positives": dict(sorted(counts.items()))}
