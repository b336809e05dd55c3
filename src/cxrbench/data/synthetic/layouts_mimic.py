"""MIMIC-CXR-JPG 2.0.0 (+ reports) and MS-CXR (boxes on the generated MIMIC images) in their download layouts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ._io import csv_text, hex_id, save_image, write_text
from .findings import PROFILES, sample_case
from .latent import Case, case_rng, sample_anatomy
from .render import box_of, instance_masks, render, to_uint8
from .reports import CHEXPERT_LABELS, phrase, write_report

META_COLS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
             "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
             "PatientOrientationCodeSequence_CodeMeaning")
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "": ""}
_REPORT_KINDS = tuple(PROFILES["report"])
MS_CXR_CATEGORY = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
                   "edema": "Edema", "effusion": "Pleural Effusion", "pneumonia": "Pneumonia",
                   "pneumothorax": "Pneumothorax"}
MS_CXR_COLS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height",
               "split")


@dataclass(frozen=True)
class MimicImage:
    dicom_id: str
    subject: int
    study: int
    view: str  # PA, AP, LATERAL or "" (missing)
    h: int
    w: int
    case: Case

    @property
    def path(self) -> str:
        s = str(self.subject)
        return f"files/p{s[:2]}/p{s}/s{self.study}/{self.dicom_id}.jpg"


@dataclass(frozen=True)
class MimicStudy:
    subject: int
    study: int
    report: str
    labels: dict[str, float]
    images: tuple[MimicImage, ...]
    date: str
    time: str


def _study(rng, seed: int, subject: int, study: int, anat, k: int, image_size: int) -> MimicStudy:
    """One study: a frontal case (coverage-forced kind for the first studies), its views and its report."""
    forced = [_REPORT_KINDS[k]] if k < len(_REPORT_KINDS) else []
    view = "PA" if rng.random() < 0.6 else "AP"
    case = sample_case(rng, profile=PROFILES["report"], forced=forced, uncertain_p=0.2, negations=3,
                       anatomy=anat, view=view)
    views = [view if k % 50 != 7 else ""] + (["LATERAL"] if rng.random() < 0.45 else [])
    images = []
    for v in views:
        w = int(round(image_size * float(rng.uniform(0.8, 1.0))))
        c = Case(anat, (), "LATERAL", case.seed + 1) if v == "LATERAL" else case
        dicom_id = "-".join(hex_id(rng, 8) for _ in range(5))
        images.append(MimicImage(dicom_id, subject, study, v, image_size, w, c))
    layout = "neither" if k % 40 == 3 else ["full", "findings", "impression"][int(rng.choice(3, p=[0.8, 0.08, 0.12]))]
    exam = "CHEST (PA AND LAT)" if len(views) > 1 else "CHEST (PORTABLE AP)"
    text, labels = write_report(case.findings, rng, exam=exam, layout=layout, addendum=k % 25 == 4)
    date = f"{int(rng.integers(2110, 2200))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    hh, mm, ss, ms = (int(rng.integers(m)) for m in (24, 60, 60, 1000))
    tm = f"{hh:02d}{mm:02d}{ss:02d}.{ms:03d}"
    return MimicStudy(subject, study, text, labels, tuple(images), date, tm)


def mimic_corpus(seed: int, n_patients: int, image_size: int) -> list[MimicStudy]:
    """The latent MIMIC corpus (no pixels): 1-3 studies per patient with unique subject/study ids."""
    ids = case_rng(seed, "mimic", 2**31 - 1)
    subjects = 10_000_000 + ids.choice(10_000_000, n_patients, replace=False)
    study_ids = 50_000_000 + ids.choice(10_000_000, 3 * n_patients, replace=False)
    out, k = [], 0
    for i in range(n_patients):
        rng = case_rng(seed, "mimic", i)
        anat = sample_anatomy(rng)
        for _ in range(int(rng.integers(1, 4))):
            out.append(_study(rng, seed, int(subjects[i]), int(study_ids[k]), anat, k, image_size))
            k += 1
    return out


def _split(subject: int) -> str:
    r = subject % 20
    return "test" if r == 0 else "validate" if r == 1 else "train"


def write_mimic(out: Path, seed: int, n: int, image_size: int) -> dict:
    """Write ``n`` patients of MIMIC-CXR-JPG into ``out``; returns counts."""
    corpus = mimic_corpus(seed, n, image_size)
    meta, chex, split = [], [], []
    for st in corpus:
        s = str(st.subject)
        write_text(out / f"files/p{s[:2]}/p{s}/s{st.study}.txt", st.report)
        chex.append([st.subject, st.study] + [st.labels[c] for c in CHEXPERT_LABELS])
        proc = "CHEST (PA AND LAT)" if len(st.images) > 1 else "CHEST (PORTABLE AP)"
        for im in st.images:
            save_image(out / im.path, to_uint8(render(im.case, im.h, im.w)))
            orient = "Recumbent" if im.view == "AP" else "Erect"
            meta.append([im.dicom_id, im.subject, im.study, proc, im.view, im.h, im.w, st.date, st.time, proc,
                         _VIEW_MEANING[im.view], orient])
            split.append([im.dicom_id, im.study, im.subject, _split(im.subject)])
    header = ("subject_id", "study_id", *CHEXPERT_LABELS)
    write_text(out / "mimic-cxr-2.0.0-metadata.csv.gz", csv_text(META_COLS, meta), gz=True)
    write_text(out / "mimic-cxr-2.0.0-chexpert.csv.gz", csv_text(header, chex), gz=True)
    write_text(out / "mimic-cxr-2.0.0-negbio.csv.gz", csv_text(header, chex), gz=True)
    write_text(out / "mimic-cxr-2.0.0-split.csv.gz", csv_text(("dicom_id", "study_id", "subject_id", "split"), split),
               gz=True)
    pos = Counter(c for row in chex for c, v in zip(CHEXPERT_LABELS, row[2:], strict=True) if v == 1.0)
    return {"patients": n, "studies": len(corpus), "images": len(meta),
            "frontal": sum(r[4] in ("PA", "AP") for r in meta), "positives": dict(sorted(pos.items())),
            "planted_phi": sorted({str(st.subject) for st in corpus})}


def ms_cxr_rows(seed: int, n_images: int, n_mimic_patients: int, image_size: int) -> list[list]:
    """MS-CXR rows (one per box) on up to ``n_images`` frontal images of the MIMIC corpus, one image per patient."""
    rng = case_rng(seed, "ms_cxr", 0)
    rows, seen = [], set()
    for st in mimic_corpus(seed, n_mimic_patients, image_size):
        im = st.images[0]
        cands = [f for f in im.case.findings if f.certainty == "present" and f.kind in MS_CXR_CATEGORY]
        if st.subject in seen or im.view not in ("PA", "AP") or not cands:
            continue
        f = cands[int(rng.integers(len(cands)))]
        cat = MS_CXR_CATEGORY[f.kind]
        text = phrase(f)
        if f.kind in ("pneumonia", "consolidation") and rng.random() < 0.35:
            cat, text = "Lung Opacity", text.replace(f.kind, "opacity")
        split = ["train", "val", "test"][int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
        for m in instance_masks(im.case, f, im.h, im.w):
            b = box_of(m)
            if b is not None:
                rows.append([im.dicom_id, cat, text, im.path, b[0], b[1], b[2] - b[0], b[3] - b[1], im.w, im.h, split])
        seen.add(st.subject)
        if len(seen) >= n_images:
            break
    return rows


def write_ms_cxr(out: Path, seed: int, n: int, image_size: int, n_mimic_patients: int) -> dict:
    """Write MS_CXR_Local_Alignment_v1.1.0.csv for the MIMIC corpus of the same seed/size."""
    rows = ms_cxr_rows(seed, n, n_mimic_patients, image_size)
    write_text(out / "MS_CXR_Local_Alignment_v1.1.0.csv", csv_text(MS_CXR_COLS, rows))
    return {"images": len({r[0] for r in rows}), "boxes": len(rows),
            "positives": dict(sorted(Counter(r[1] for r in {r[0]: r for r in rows}.values()).items()))}

