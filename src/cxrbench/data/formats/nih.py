"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt``,
``test_list.txt``,
``images/*.png``.

Both CSV headers contain bracketed names with commas (``OriginalImage[Width,Height]``, ``Bbox [x,y,w,h]``),
so the
header has more comma-separated fields than names; ``bracket_header`` rebuilds one name per field
(``OriginalImage[Width]``, ``OriginalImage[Height]``, ``Bbox [x]`` ...). Trailing empty columns are dropped.
``Patient Gender`` (M / F) and ``Patient Age`` (years, or ``058Y`` in early releases) become the store's
``sex_female`` / ``age_years`` (``cxrbench.data.demographics``): the few ages above 122 (entry errors such as 412)
are ``bad_metadata`` problems, unknown for the metadata task; a table without those columns has them unknown.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.demographics import parse_age, parse_sex
from cxrbench.data.formats._base import DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, check_columns, check_unique, make_index, read_text
from cxrbench.data.problems import Problems
from cxrbench.data.splits import group_holdout
from cxrbench.registry import DATASETS

LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
ALIASES = {"Infiltrate": "Infiltration"}
ENTRY, BBOX, TRAIN_VAL, TEST = (
    "Data_Entry_2017.csv",
    "BBox_List_2017.csv",
    "train_val_list.txt",
    "test_list.txt",
)


def bracket_header(fields: list[str]) -> list[str]:
    """One name per comma-separated header field: ``['A[x', 'y]']`` -> ``['A[x]', 'A[y]']``."""
    names, prefix = [], None
    for f in fields:
        if prefix is None and "[" in f and "]" not in f:
            prefix, first = f.split("[", 1)
            names.append(f"{prefix}[{first}]")
        elif prefix is not None:
            names.append(f"{prefix}[{f.rstrip(']')}]")
            prefix = None if f.endswith("]") else prefix
        else:
            names.append(f)
    return names


def read_bracketed_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """A CSV whose header has bracketed multi-field names, as strings; all-empty unnamed columns are "
    "dropped."""
    rows = list(csv.reader(io.StringIO(read_text(path))))
    if not rows:
        raise DataFormatError(f"{path}: empty file")
    names = bracket_header(rows[0])
    width = max(len(names), *(len(r) for r in rows[1:])) if len(rows) > 1 else len(names)
    names += [""] * (width - len(names))
    body = [r + [""] * (width - len(r)) for r in rows[1:] if any(c.strip() for c in r)]
    df = pd.DataFrame(body, columns=[n if n else f"__unnamed_{i}" for i, n in enumerate(names)], dtype=object)
    for i, n in enumerate(names):
        col = n if n else f"__unnamed_{i}"
        if not n and len(df) and (df[col].str.strip() != "").any():
            pos = int(np.flatnonzero((df[col].str.strip() != "").to_numpy())[0])
            raise DataFormatError(f"{path}: line {pos + 2}: value {df[col].iloc[pos]!r} in unnamed column {i + 1}")
    df = df[[c for c in df.columns if not c.startswith("__unnamed_")]]
    check_columns(df, required, path)
    return df


@DATASETS.register("nih")
class NIHChestXray14(DatasetFormat):
    name = "nih"
    title = "NIH ChestX-ray14"
    label_names = LABELS
    label_kind = "multilabel"
    has_boxes = True
    paper_split_sizes = (77872, 8652, 25596)
    main_table = "Data_Entry_2017.csv"
    split_source = "train_val_list.txt or test_list.txt"
    download_hint = (
        "Download NIH ChestX-ray14 (Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, "
        "test_list.txt and "
        "all images_*.tar.gz extracted into one images/ folder) into the raw directory (params key "
        "data.datasets.nih.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        entry, bbox, tv, test = self.require(raw_dir, ENTRY, BBOX, TRAIN_VAL, TEST)
        problems = Problems(Path(raw_dir))
        df = read_bracketed_csv(entry, ["Image Index", "Finding Labels", "Patient ID"])
        bad = BadRows(entry, problems)
        ids = pd.Series([i.strip() or f"?line{k + 2}" for k, i in enumerate(df["Image Index"])], index=df.index)
        for pos in np.flatnonzero(ids.str.startswith("?line").to_numpy()):
            bad.bad(int(pos), "no_image_id", "empty Image Index", ids.iloc[pos], "Image Index")
        first = check_unique(ids, bad)
        labels = self._labels(df["Finding Labels"], ids, bad)
        demo = self._demographics(df, ids, bad, first)
        lines = np.arange(len(df)) + 2
        ids, labels, patient, lines = ids[first], labels[first], df["Patient ID"].str.strip()[first], lines[first]
        official = self._official(tv, test, list(ids), problems)
        boxes, box_labels = self._boxes(bbox, set(ids), problems)
        index = make_index(
            {
                "image_id": ids,
                "path": "images/" + ids,
                "patient": patient,
                "official_split": ids.map(official),
                "line": lines,
                "boxes": [boxes.get(i, []) for i in ids],
                "box_labels": [box_labels.get(i, []) for i in ids],
                **{col: values[first] for col, values in demo.items()},
                **{name: labels[:, k] for k, name in enumerate(LABELS)},
            },
            LABELS,
            int(first.sum()),
        )
        counts = {
            "images": len(index),
            "patients": int(index["patient"].nunique()),
            "train_val": int((index["official_split"] == "train").sum()),
            "test": int((index["official_split"] == "test").sum()),
            "boxes": int(index["boxes"].map(len).sum()),
        }
        return ReadResult(index, problems.items, counts)

    @staticmethod
    def _labels(col: pd.Series, ids: pd.Series, bad: BadRows) -> np.ndarray:
        out = np.zeros((len(col), len(LABELS)), dtype=float)
        known = {n: k for k, n in enumerate(LABELS)}
        for pos, text in enumerate(col):
            names = [t.strip() for t in str(text).split("|")]
            wrong = [n for n in names if n not in known and n != "No Finding"]
            if wrong:
                detail = f"unknown label(s) {wrong}; expected '|'-joined names of {list(LABELS)} or 'No Finding'"
                bad.bad(pos, "bad_label", detail, str(ids.iloc[pos]), "Finding Labels")
                out[pos] = np.nan
                continue
            for n in names:
                if n in known:
                    out[pos, known[n]] = 1.0
        return out

    @staticmethod
    def _demographics(df: pd.DataFrame, ids: pd.Series, bad: BadRows, check: np.ndarray) -> dict[str, np.ndarray]:
        """{"sex_female", "age_years"} (n,) from ``Patient Gender`` / ``Patient Age`` (all unknown if absent)."""
        blank = pd.Series([""] * len(df), index=df.index)
        return {"sex_female": parse_sex(df.get("Patient Gender", blank), bad, ids, "Patient Gender", check),
                "age_years": parse_age(df.get("Patient Age", blank), bad, ids, "Patient Age", check)}

    @staticmethod
    def _official(tv: Path, test: Path, ids: list[str], problems: Problems) -> dict[str, str]:
        """{image: "train" | "test"} from the two list files; an image in both is an ``in_both_lists`` problem."""
        lists = {s: [x.strip() for x in read_text(p).splitlines()] for s, p in (("train", tv), ("test", test))}
        where = {s: {name: k + 1 for k, name in enumerate(names) if name} for s, names in lists.items()}
        known = set(ids)
        for name in sorted(set(where["train"]) & set(where["test"]) & known):
            problems.add("in_both_lists", f"also on line {where['train'][name]} of {TRAIN_VAL}; expected one list",
                         table=test, line=where["test"][name], image=name)
        return {i: s for s, names in where.items() for i in names if i in known}

    @staticmethod
    def _boxes(path: Path, ids: set[str], problems: Problems) -> tuple[dict, dict]:
        df = read_bracketed_csv(path, ["Image Index", "Finding Label", "Bbox [x]", "Bbox [y]", "Bbox [w]", "Bbox [h]"])
        bad = BadRows(path, problems)
        boxes: dict[str, list] = {}
        labels: dict[str, list] = {}
        xywh = df[["Bbox [x]", "Bbox [y]", "Bbox [w]", "Bbox [h]"]].apply(pd.to_numeric, errors="coerce")
        for pos, (iid, lab) in enumerate(
            zip(df["Image Index"].str.strip(), df["Finding Label"].str.strip(), strict=True)
        ):
            lab = ALIASES.get(lab, lab)
            x, y, w, h = xywh.iloc[pos].to_numpy(dtype=float)
            if lab not in LABELS:
                bad.bad(pos, "box_bad_row", f"unknown label {lab!r}; expected one of {list(LABELS)}", iid,
                        "Finding Label")
            elif not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
                detail = f"bad box {df.iloc[pos, 2:6].tolist()}; expected numbers with w, h > 0"
                bad.bad(pos, "box_bad_row", detail, iid, "Bbox [x,y,w,h]")
            elif iid not in ids:
                bad.bad(pos, "box_unknown_image", f"image {iid!r} is not in {ENTRY}", None, "Image Index")
            else:
                boxes.setdefault(iid, []).append([x, y, x + w, y + h])
                labels.setdefault(iid, []).append(lab)
        return boxes, labels

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """Official test list = test; train_val list split 90/10 patient-disjoint: whole patients, in an order
        drawn by ``np.random.default_rng(options["split_seed"])``, go to valid until >= round(valid_frac * n)
        images (``valid_frac`` default 0.1). Images in neither list get None."""
        split = index["official_split"].astype(object).where(index["official_split"].notna(), None)
        tv = index["official_split"] == "train"
        n_valid = int(round(float(options.get("valid_frac", 0.1)) * int(tv.sum())))
        held = group_holdout(
            index.loc[tv, "patient"], n_valid, np.random.default_rng(int(options.get("split_seed", 0)))
        )
        split[held[held].index] = "valid"
        return split.rename("split")
