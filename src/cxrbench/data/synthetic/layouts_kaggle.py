"""RSNA Pneumonia (stage 2) and SIIM-ACR Pneumothorax in their Kaggle download layouts (DICOM + label CSV).

Boxes and RLE masks are in the pixel frame of the written image. DICOM storage variants (see ``dicom_writer``) are
cycled over the first files and then drawn (mostly JPEG Baseline); about one image in eight is non-square.
Planted identifiers (fake names, ids, birth dates) are returned under ``planted_phi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import csv_text, fake_person, uuid_like, write_text
from .dicom_writer import VARIANTS, write_dicom
from .findings import PROFILES, make_finding, sample_case
from .latent import Case, case_rng, sample_anatomy
from .render import box_of, instance_masks, render

_VARIANT_P = np.array([0.7] + [0.05] * (len(VARIANTS) - 1))


@dataclass(frozen=True)
class KaggleItem:
    """One generated DICOM: id, latent case, written size, storage variant, planted person, UIDs."""

    image_id: str
    case: Case
    h: int
    w: int
    variant: str
    person: dict[str, str]
    uids: tuple[str, str, str]
    sex: str
    age: int

    def masks(self, kind: str) -> list[np.ndarray]:
        """Instance masks (h, w) of the visible findings of ``kind``."""
        return [m for f in self.case.visible() if f.kind == kind for m in instance_masks(self.case, f, self.h, self.w)]


def _uid(rng: np.random.Generator, level: int) -> str:
    return (f"1.2.276.0.7230010.3.1.{level}.8323329.{int(rng.integers(1000, 32000))}."
            f"{1517874000 + int(rng.integers(0, 9999))}.{int(rng.integers(100000, 999999))}")


def kaggle_items(seed: int, dataset: str, n: int, image_size: int) -> list[KaggleItem]:
    """The latent items of ``dataset`` ("rsna" or "siim"): ~30% positive for pneumonia / pneumothorax."""
    kind = "pneumonia" if dataset == "rsna" else "pneumothorax"
    out = []
    for i in range(n):
        rng = case_rng(seed, dataset, i)
        anat = sample_anatomy(rng)
        positive = i % 3 == 0 if i < 12 else rng.random() < 0.3
        case = sample_case(rng, profile=PROFILES["distractor"], anatomy=anat,
                           view="AP" if rng.random() < 0.5 else "PA")
        if positive:
            side = ("right", "left", "bilateral")[int(rng.integers(3))]
            f = make_finding(rng, anat, kind, side=side, n=int(rng.integers(1, 3)))
            case = Case(anat, case.findings + (f,), case.view, case.seed)
        variant = VARIANTS[i] if i < len(VARIANTS) else str(rng.choice(VARIANTS, p=_VARIANT_P))
        w = image_size if i % 8 != 5 else int(round(image_size * 0.875))
        uids = (_uid(rng, 2), _uid(rng, 3), _uid(rng, 4))
        image_id = uuid_like(rng) if dataset == "rsna" else uids[2]
        out.append(KaggleItem(image_id, case, image_size, w, variant, fake_person(rng), uids,
                              "MF"[int(rng.integers(2))], int(rng.integers(18, 91))))
    return out


def _dicom_meta(item: KaggleItem, dataset: str) -> dict[str, str]:
    p = item.person
    meta = {"PatientSex": item.sex, "PatientAge": str(item.age), "ViewPosition": item.case.view,
            "PatientBirthDate": p["birth"]}
    if dataset == "rsna":  # as in the real files: PatientName = PatientID = patientId
        meta.update(PatientName=item.image_id, PatientID=item.image_id, OtherPatientNames=p["name"])
    else:
        meta.update(PatientName=p["name"], PatientID=p["id"])
    return meta


def write_rsna(out: Path, seed: int, n: int, image_size: int) -> dict:
    """stage_2_train_images/<patientId>.dcm and stage_2_train_labels.csv (one row per box, float coords)."""
    rows, n_pos, variants = [], 0, {}
    items = kaggle_items(seed, "rsna", n, image_size)
    for it in items:
        write_dicom(out / "stage_2_train_images" / f"{it.image_id}.dcm", render(it.case, it.h, it.w),
                    variant=it.variant, meta=_dicom_meta(it, "rsna"), uids=it.uids)
        variants[it.variant] = variants.get(it.variant, 0) + 1
        boxes = [b for b in map(box_of, it.masks("pneumonia")) if b is not None][:4]
        n_pos += bool(boxes)
        for b in boxes:
            rows.append([it.image_id, float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]), 1])
        if not boxes:
            rows.append([it.image_id, None, None, None, None, 0])
    write_text(out / "stage_2_train_labels.csv", csv_text(("patientId", "x", "y", "width", "height", "Target"), rows))
    return {"images": len(items), "rows": len(rows), "positive": n_pos, "variants": dict(sorted(variants.items())),
            "planted_phi": sorted({it.person["name"] for it in items} | {it.person["birth"] for it in items})}


def write_siim(out: Path, seed: int, n: int, image_size: int, rle_encode) -> dict:
    """dicom-images-train/<Study>/<Series>/<SOP>.dcm and train-rle.csv (one row per pneumothorax instance)."""
    lines, n_pos, variants = ["ImageId, EncodedPixels"], 0, {}
    items = kaggle_items(seed, "siim", n, image_size)
    for j, it in enumerate(items):
        study, series, sop = it.uids
        write_dicom(out / "dicom-images-train" / study / series / f"{sop}.dcm", render(it.case, it.h, it.w),
                    variant=it.variant, meta=_dicom_meta(it, "siim"), uids=it.uids)
        variants[it.variant] = variants.get(it.variant, 0) + 1
        rles = [rle_encode(m) for m in it.masks("pneumothorax") if m.any()]
        n_pos += bool(rles)
        sep = ", " if j % 2 == 0 else ","
        lines.extend(f"{sop}{sep}{r}" for r in rles or ["-1"])
    write_text(out / "train-rle.csv", "\n".join(lines) + "\n")
    persons = [it.person for it in items]
    return {"images": len(items), "rows": len(lines) - 1, "positive": n_pos, "variants": dict(sorted(variants.items())),
            "planted_phi": sorted({p[k] for p in persons for k in ("name", "id", "birth")})}
