"""MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports: the pretraining corpus (frontal image, report text) pairs.

Files: ``mimic-cxr-2.0.0-{metadata,chexpert,split}.csv`` (plain or ``.gz``), images
``files/pXX/p<subject>/s<study>/<dicom_id>.jpg`` and reports ``files/pXX/p<subject>/s<study>.txt``.
Only PA/AP images are kept. Text = impression + findings (``cxrbench.data.reports.pretraining_text``); a study
whose report has neither section is dropped by the protocol (counted); a missing, empty or binary report is a
problem (``cxrbench.data.problems``) of every image of the study. With ``exclude_csv`` (the MS-CXR csv),
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
from cxrbench.data.problems import Problems
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


REPORT_DETAIL = {
    "report_missing": "no report file beside the study folder (expected files/pXX/p<subject>/s<study>.txt)",
    "report_empty": "report file is empty",
    "report_unreadable": "report file is not UTF-8 text (binary or another encoding)",
}


def read_report(path: Path) -> tuple[str | None, str | None]:
    """(problem kind or None, pretraining text or None) of one report file."""
    if not path.is_file():
        return "report_missing", None
    data = path.read_bytes()
    if not data.strip():
        return "report_empty", None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "report_unreadable", None
    if "\0" in text:
        return "report_unreadable", None
    return None, pretraining_text(text)


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
    main_table = "mimic-cxr-2.0.0-metadata.csv"
    split_source = "mimic-cxr-2.0.0-split.csv (one row per dicom_id)"
    download_hint = (
        "Download MIMIC-CXR-JPG 2.0.0 (files/, mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz) and the "
        "MIMIC-CXR "
        "2.0.0 reports (files/pXX/p<subject>/s<study>.txt) from PhysioNet into one raw directory "
        "(params key data.datasets.mimic.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        raw_dir = Path(raw_dir)
        problems = Problems(raw_dir)
        meta_path = find_file(self, raw_dir, f"{PREFIX}metadata.csv")
        meta = read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
        meta = meta.apply(lambda c: c.str.strip()).assign(line=np.arange(len(meta)) + 2)
        meta = meta[check_unique(meta["dicom_id"], BadRows(meta_path, problems), "dicom_id")]
        views = tuple(options.get("views", ("PA", "AP")))
        frontal = meta["ViewPosition"].isin(views)
        counts = {"images": len(meta), "protocol_non_frontal": int((~frontal).sum())}
        meta = self._exclude(meta[frontal], options.get("exclude_csv"), counts)
        meta = meta.assign(official_split=meta["dicom_id"].map(self._splits(raw_dir, problems)))
        labels = self._labels(raw_dir, meta, problems, options.get("uncertain", "nan"))
        texts, no_sections = self._texts(raw_dir, meta, problems, counts)
        meta = meta.assign(text=meta["study_id"].map(texts))
        keep = ~meta["study_id"].isin(no_sections).to_numpy()  # a study with an unreadable report stays, flagged
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
                "line": meta["line"],
                **{c: labels[c] for c in LABELS},
            },
            LABELS,
            len(meta),
        )
        counts.update(pairs=int(index["text"].notna().sum()), studies=int(index["study_id"].nunique()))
        return ReadResult(index, problems.items, counts)

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
        counts["protocol_ms_cxr_exclusion"] = int((image | patient).sum())
        return meta[~(image | patient)]

    def _splits(self, raw_dir: Path, problems: Problems) -> dict[str, str]:
        path = find_file(self, raw_dir, f"{PREFIX}split.csv")
        df = read_csv(path, ["dicom_id", "split"])
        ids, values = df["dicom_id"].str.strip(), df["split"].str.strip()
        bad = BadRows(path, problems)
        for pos in np.flatnonzero(~values.isin(list(SPLITS)).to_numpy()):
            bad.bad(int(pos), "bad_value", f"value {values.iloc[pos]!r}; expected one of {list(SPLITS)}",
                    ids.iloc[pos], "split")
        return dict(zip(ids, values.map(SPLITS), strict=True))

    def _labels(self, raw_dir: Path, meta: pd.DataFrame, problems: Problems, uncertain: str):
        """Per-image labels from the per-study chexpert csv (index-aligned with ``meta``)."""
        if uncertain not in UNCERTAIN:
            raise ValueError(f"mimic: option uncertain={uncertain!r}; expected one of {list(UNCERTAIN)}")
        path = find_file(self, raw_dir, f"{PREFIX}chexpert.csv")
        df = read_csv(path, ["subject_id", "study_id", *LABELS])
        bad = BadRows(path, problems, group="study_id")
        study = df["study_id"].str.strip()
        first = check_unique(study, bad, "study_id")
        values = parse_labels(df, LABELS, bad, (1.0, 0.0, -1.0), study)
        values = values.replace(-1.0, UNCERTAIN[uncertain])
        values.index = study
        values = values[first]
        return values.reindex(meta["study_id"].to_numpy()).set_axis(meta.index)

    @staticmethod
    def _texts(raw_dir: Path, meta: pd.DataFrame, problems: Problems, counts: dict) -> tuple[dict, set[str]]:
        """({study: pretraining text, or None when its report is missing/empty/unreadable (a problem)}, the studies
        whose report has neither FINDINGS nor IMPRESSION: a protocol drop, counted)."""
        texts: dict[str, str | None] = {}
        no_sections: set[str] = set()
        for subject, study in meta[["subject_id", "study_id"]].drop_duplicates().itertuples(index=False):
            rel = f"{study_dir(subject, study)}.txt"
            kind, text = read_report(raw_dir / rel)
            if kind is not None:
                problems.add(kind, REPORT_DETAIL[kind], path=rel, group=("study_id", study))
                texts[study] = None
            elif text is None:
                no_sections.add(study)
            else:
                texts[study] = text
        counts["protocol_no_findings_impression"] = int(meta["study_id"].isin(no_sections).sum())
        counts["studies_without_findings_impression"] = len(no_sections)
        return texts, no_sections

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The official split.csv with validate + test merged into valid (pretraining monitors on it)."""
        split = index["official_split"].map({"train": "train", "valid": "valid", "test": "valid"})
        return split.astype(object).where(split.notna(), None).rename("split")
