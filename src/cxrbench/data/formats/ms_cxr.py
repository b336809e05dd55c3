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

from cxrbench.data.formats._base import DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, read_csv
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
        skipped: list[dict[str, Any]] = []
        df = read_csv(path, COLUMNS).apply(lambda c: c.str.strip())
        bad = BadRows(path, bool(options.get("skip_bad", False)), skipped)
        xywh = df[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        for pos in range(len(df)):
            if df["category_name"].iloc[pos] not in CATEGORIES:
                bad.bad(
                    pos,
                    f"column 'category_name': {df['category_name'].iloc[pos]!r} not in {list(CATEGORIES)}",
                    df["dicom_id"].iloc[pos],
                )
            elif not np.isfinite(xywh[pos]).all() or (xywh[pos, 2:] <= 0).any():
                bad.bad(
                    pos,
                    f"columns x,y,w,h: bad box {df.iloc[pos][['x', 'y', 'w', 'h']].tolist()}",
                    df["dicom_id"].iloc[pos],
                )
            elif df["split"].iloc[pos] not in SPLITS:
                bad.bad(
                    pos,
                    f"column 'split': {df['split'].iloc[pos]!r} not train/val/test",
                    df["dicom_id"].iloc[pos],
                )
        frame = df.assign(box=[[x, y, x + w, y + h] for x, y, w, h in xywh.tolist()])
        frame = bad.drop(frame)
        index = self._group(frame, root, path)
        counts = {
            "rows": len(df),
            "images": int(index["dicom_id"].nunique()),
            "phrases": len(index),
            "boxes": int(index["boxes"].map(len).sum()),
            "skipped": len(skipped),
        }
        return ReadResult(index, skipped, counts)

    def _group(self, frame: pd.DataFrame, root: Path, path: Path) -> pd.DataFrame:
        rows = []
        for (dicom, text), g in frame.groupby(["dicom_id", "label_text"], sort=False):
            for col in ("category_name", "path", "split"):
                if g[col].nunique() > 1:
                    raise DataFormatError(
                        f"{path}: dicom_id {dicom!r}, phrase {text!r}: conflicting {col} values "
                        f"{sorted(g[col].unique())}"
                    )
            first = g.iloc[0]
            m = _SUBJECT.search(first["path"])
            rows.append(
                {
                    "dicom_id": dicom,
                    "text": text,
                    "path": str(root / first["path"]),
                    "patient": m.group(1) if m else None,
                    "official_split": SPLITS[first["split"]],
                    "boxes": g["box"].tolist(),
                    "category": first["category_name"],
                    "image_width": float(first["image_width"] or "nan"),
                    "image_height": float(first["image_height"] or "nan"),
                }
            )
        out = pd.DataFrame(
            rows,
            columns=[
                "dicom_id",
                "text",
                "path",
                "patient",
                "official_split",
                "boxes",
                "category",
                "image_width",
                "image_height",
            ],
        )
        out["image_id"] = out["dicom_id"] + "#" + out.groupby("dicom_id").cumcount().astype(str)
        for c in CATEGORIES:
            out[c] = (out["category"] == c).astype(float)
        return make_index({c: out[c] for c in out.columns}, CATEGORIES, len(out))

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The csv's own ``split`` column (val -> valid)."""
        return index["official_split"].astype(object).rename("split")
