"""MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports: the pretraining corpus (frontal image, report text) pairs.

Files: ``mimic-cxr-2.0.0-{metadata,chexpert,split}.csv`` (plain or ``.gz``), images
``files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` and reports ``files/pXX/p<subject>/s<study>.txt``.
Only PA/AP images are kept. Text = impression + findings (``cxrbench.data.reports.pretraining_text``); a study
whose report is missing or has neither section is dropped and counted. With ``exclude_csv`` (the MS-CXR csv),
the MS-CXR images AND every image of their patients are excluded, counted. Labels = the chexpert csv per study
(1 / 0; uncertain -1 -> NaN by default, option ``uncertain``: "nan" | "ones" | "zeros"; blank -> NaN).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, check_unique, find_file, make_index, parse_labels, read_csv
from cxrbench.data.reports import pretraining_text
from cxrbench.registry import DATASETS

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
PREFIX = "mimic-cxr-2.0.0-"
SPLITS = {"train": "train", "validate": "valid", "test": "test"}
UNCERTAIN = {"nan": np.nan, "ones": 1.0, "zeros": 0.0}
_SUBJECT = re.compile(r"/p(\d{8})/")


def study_dir(subject: str, study: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}"


def ms_cxr_exclusions(path: Path) -> tuple[set[str], set[str]]:
    """(dicom_ids, subject_ids) of an MS-CXR csv (subjects parsed from its ``path`` column)."""
    df = read_csv(Path(path), ["dicom_id", "path"])
    subjects = {m.group(1) for p in df["path"] if (m := _SUBJECT.search("/" + p.strip()))}
    return set(df["dicom_id"].str.strip()), subjects


@DATASETS.register("mimic")
class MIMICCXR(DatasetFormat):
    name = "mimic"
    title = "MIMIC-CXR-JPG 2.0.0 (+ MIMIC-CXR reports)"
    label_names = LABELS
    label_kind = "multilabel"
    has_text = True
    download_hint = (
        "Download MIMIC-CXR-JPG 2.0.0 (files/, mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz) and the "
        "MIMIC-CXR "
        "2.0.0 reports (files/pXX/p<subject>/s<study>.txt) from PhysioNet into one raw directory "
        "(params key data.datasets.mimic.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        raw_dir = Path(raw_dir)
        skip_bad = bool(options.get("skip_bad", False))
        skipped: list[dict[str, Any]] = []
        meta_path = find_file(self, raw_dir, f"{PREFIX}metadata.csv")
        meta = read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
        meta = meta.apply(lambda c: c.str.strip())
        bad = BadRows(meta_path, skip_bad, skipped)
        check_unique(meta["dicom_id"], bad, "dicom_id")
        meta = bad.drop(meta)
        views = tuple(options.get("views", ("PA", "AP")))
        counts = {"images": len(meta), "non_frontal_dropped": int((~meta["ViewPosition"].isin(views)).sum())}
        meta = meta[meta["ViewPosition"].isin(views)]
        meta = self._exclude(meta, options.get("exclude_csv"), counts)
        meta = meta.assign(official_split=meta["dicom_id"].map(self._splits(raw_dir)))
        labels = self._labels(raw_dir, meta, skip_bad, skipped, options.get("uncertain", "nan"))
        texts = self._texts(raw_dir, meta, skipped, counts)
        meta = meta.assign(text=meta["study_id"].map(texts))
        keep = meta["text"].notna().to_numpy()
        meta, labels = meta[keep], labels[keep]
        index = make_index(
            {
                "image_id": meta["dicom_id"],
                "path": [
                    f"{study_dir(a, b)}/{c}.jpg"
                    for a, b, c in zip(meta["subject_id"], meta["study_id"], meta["dicom_id"], strict=True)
                ],
                "patient": meta["subject_id"],
                "official_split": meta["official_split"],
                "text": meta["text"],
                "study_id": meta["study_id"],
                "view": meta["ViewPosition"],
                **{c: labels[c] for c in LABELS},
            },
            LABELS,
            len(meta),
        )
        counts.update(pairs=len(index), studies=int(index["study_id"].nunique()), skipped=len(skipped))
        return ReadResult(index, skipped, counts)

    @staticmethod
    def _exclude(meta: pd.DataFrame, exclude_csv: Any, counts: dict) -> pd.DataFrame:
        if not exclude_csv:
            return meta
        dicoms, subjects = ms_cxr_exclusions(Path(exclude_csv))
        image = meta["dicom_id"].isin(dicoms)
        patient = meta["subject_id"].isin(subjects) & ~image
        counts["excluded_ms_cxr_images"] = int(image.sum())
        counts["excluded_ms_cxr_patient_images"] = int(patient.sum())
        counts["excluded_ms_cxr_patients"] = len(subjects)
        return meta[~(image | patient)]

    def _splits(self, raw_dir: Path) -> dict[str, str]:
        path = find_file(self, raw_dir, f"{PREFIX}split.csv")
        df = read_csv(path, ["dicom_id", "split"])
        return dict(zip(df["dicom_id"].str.strip(), df["split"].str.strip().map(SPLITS), strict=True))

    def _labels(self, raw_dir: Path, meta: pd.DataFrame, skip_bad: bool, skipped: list, uncertain: str):
        """Per-image labels from the per-study chexpert csv (index-aligned with ``meta``)."""
        if uncertain not in UNCERTAIN:
            raise ValueError(f"mimic: option uncertain={uncertain!r}; expected one of {list(UNCERTAIN)}")
        path = find_file(self, raw_dir, f"{PREFIX}chexpert.csv")
        df = read_csv(path, ["subject_id", "study_id", *LABELS])
        bad = BadRows(path, skip_bad, skipped)
        study = df["study_id"].str.strip()
        check_unique(study, bad, "study_id")
        values = parse_labels(df, LABELS, bad, (1.0, 0.0, -1.0), study)
        values = values.replace(-1.0, UNCERTAIN[uncertain])
        values.index = study
        values = bad.drop(values.reset_index()).set_index("study_id")
        return values.reindex(meta["study_id"].to_numpy()).set_axis(meta.index)

    @staticmethod
    def _texts(raw_dir: Path, meta: pd.DataFrame, skipped: list, counts: dict) -> dict[str, str]:
        texts, missing, empty = {}, 0, 0
        for subject, study in meta[["subject_id", "study_id"]].drop_duplicates().itertuples(index=False):
            path = raw_dir / f"{study_dir(subject, study)}.txt"
            if not path.exists():
                missing += 1
                skipped.append({"file": str(path), "line": None, "id": study, "reason": "report file missing"})
                continue
            text = pretraining_text(path.read_text(errors="replace"))
            if text is None:
                empty += 1
            else:
                texts[study] = text
        counts["studies_missing_report"], counts["studies_without_findings_impression"] = missing, empty
        counts["images_dropped_no_text"] = int((~meta["study_id"].isin(texts.keys())).sum())
        return texts

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The official split.csv with validate + test merged into valid (pretraining monitors on it)."""
        split = index["official_split"].map({"train": "train", "valid": "valid", "test": "valid"})
        return split.astype(object).where(split.notna(), None).rename("split")
