"""MS-CXR (v1.1.0) phrase grounding: ``MS_CXR_Local_Alignment_v1.1.0.csv`` over MIMIC-CXR-JPG images.

Columns ``dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split``; one row per box.
The raw index has one row per (image, phrase): rows of the same ``dicom_id`` and ``label_text`` are grouped,
their
boxes (x, y, w, h -> xyxy, original pixels) listed; ``image_id`` = ``<dicom_id>#<k>`` (k = phrase number
within the
image, in file order), ``text`` = the phrase, the category one-hot. Image paths resolve under
``images_root`` (the
MIMIC-CXR-JPG raw dir; default ``<raw_dir>/../mimic``) and are stored absolute.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, read_csv
from cxrbench.data.problems import Problems
from cxrbench.registry import DATASETS

CSV = "MS_CXR_Local_Alignment_v1.1.0.csv"
CATEGORIES = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Lung Opacity",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)
COLUMNS = (
    "dicom_id",
    "category_name",
    "label_text",
    "path",
    "x",
    "y",
    "w",
    "h",
    "image_width",
    "image_height",
    "split",
)
SPLITS = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test"}
_SUBJECT = re.compile(r"(?:^|/)p(\d{8})/")


@DATASETS.register("ms_cxr")
class MSCXR(DatasetFormat):
    name = "ms_cxr"
    title = "MS-CXR (v1.1.0)"
    label_names = CATEGORIES
    label_kind = "multiclass"
    has_boxes = True
    has_text = True
    main_table = "MS_CXR_Local_Alignment_v1.1.0.csv"
    split_source = "its split column"
    download_hint = (
        f"Download MS-CXR v1.1.0 from PhysioNet and put {CSV} in the raw directory (params key "
        "data.datasets.ms_cxr.raw); its images are read from the MIMIC-CXR-JPG raw directory (option "
        "images_root, "
        "default data/raw/mimic)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        (path,) = self.require(raw_dir, options.get("csv", CSV))
        root = Path(options.get("images_root") or Path(raw_dir).resolve().parent / "mimic").resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{self.title}: images_root {root} does not exist. {self.download_hint}")
        problems = Problems(Path(raw_dir))
        df = read_csv(path, COLUMNS).apply(lambda c: c.str.strip())
        bad = BadRows(path, problems, group="dicom_id")
        xywh = df[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        for pos in range(len(df)):
            row = df.iloc[pos]
            if row["category_name"] not in CATEGORIES:
                detail = f"value {row['category_name']!r}; expected one of {list(CATEGORIES)}"
                bad.bad(pos, "bad_label", detail, row["dicom_id"], "category_name")
            elif not np.isfinite(xywh[pos]).all() or (xywh[pos, 2:] <= 0).any():
                detail = f"bad box {row[['x', 'y', 'w', 'h']].tolist()}; expected numbers with w, h > 0"
                bad.bad(pos, "bad_box", detail, row["dicom_id"], "x,y,w,h")
            elif row["split"] not in SPLITS:
                detail = f"value {row['split']!r}; expected one of {sorted(SPLITS)}"
                bad.bad(pos, "bad_value", detail, row["dicom_id"], "split")
        frame = df.assign(box=[[x, y, x + w, y + h] for x, y, w, h in xywh.tolist()], line=np.arange(len(df)) + 2,
                          ok=~np.isin(np.arange(len(df)), list(bad.rows)))
        index = self._group(frame, root, path, problems)  # bad rows stay (flagged): phrase numbers do not move
        counts = {
            "rows": len(df),
            "images": int(index["dicom_id"].nunique()),
            "phrases": len(index),
            "boxes": int(index["boxes"].map(len).sum()),
        }
        return ReadResult(index, problems.items, counts)

    def _group(self, frame: pd.DataFrame, root: Path, path: Path, problems: Problems) -> pd.DataFrame:
        rows = []
        for (dicom, text), g in frame.groupby(["dicom_id", "label_text"], sort=False):
            for col in ("category_name", "path", "split"):
                if g.loc[g["ok"], col].nunique() > 1:
                    problems.add("conflicting_rows", f"phrase {text!r}: conflicting {col} values "
                                 f"{sorted(g[col].unique())}", table=path, line=int(g["line"].iloc[1]),
                                 column=col, group=("dicom_id", dicom))
            first = g.iloc[0]
            m = _SUBJECT.search(first["path"])
            rows.append(
                {
                    "dicom_id": dicom,
                    "text": text,
                    "path": str(root / first["path"]),
                    "patient": m.group(1) if m else None,
                    "official_split": SPLITS.get(first["split"]),
                    "line": int(first["line"]),
                    "boxes": g["box"].tolist(),
                    "category": first["category_name"],
                    "image_width": float(first["image_width"] or "nan"),
                    "image_height": float(first["image_height"] or "nan"),
                }
            )
        columns = ["dicom_id", "text", "path", "patient", "official_split", "line", "boxes", "category",
                   "image_width", "image_height"]
        out = pd.DataFrame(rows, columns=columns)
        out["image_id"] = out["dicom_id"] + "#" + out.groupby("dicom_id").cumcount().astype(str)
        for c in CATEGORIES:
            out[c] = (out["category"] == c).astype(float)
        return make_index({c: out[c] for c in out.columns}, CATEGORIES, len(out))

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The csv's own ``split`` column (val -> valid)."""
        return index["official_split"].astype(object).rename("split")
