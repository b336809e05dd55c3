"""RSNA Pneumonia Detection (Kaggle stage 2): ``stage_2_train_labels.csv`` +
``stage_2_train_images/<id>.dcm``.

One CSV row per box (``patientId,x,y,width,height,Target``); a negative image has one row with empty box
fields.
Rows of one image are grouped (order of first appearance); boxes become xyxy floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.formats._base import DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, parse_labels, read_csv
from cxrbench.data.splits import sklearn_three_way
from cxrbench.registry import DATASETS

LABELS = "stage_2_train_labels.csv"
REAL_IMAGES, REAL_TEST = 26684, 10674


def default_test_size(n: int) -> int:
    """10,674 at the real size (26,684 images), else scaled: round(10674 / 26684 * n)."""
    return REAL_TEST if n == REAL_IMAGES else int(round(REAL_TEST / REAL_IMAGES * n))


@DATASETS.register("rsna")
class RSNAPneumonia(DatasetFormat):
    name = "rsna"
    title = "RSNA Pneumonia (Kaggle stage 2)"
    label_names = ("Pneumonia",)
    label_kind = "multilabel"
    has_boxes = True
    has_masks = True  # boxes filled as masks for segmentation
    paper_split_sizes = (16010, 5337, 5337)
    download_hint = (
        "Download the Kaggle 'rsna-pneumonia-detection-challenge' data (stage 2) and put "
        "stage_2_train_labels.csv and "
        "the stage_2_train_images/ folder in the raw directory (params key data.datasets.rsna.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        (path,) = self.require(raw_dir, LABELS)
        self.require(raw_dir, "stage_2_train_images")
        skipped: list[dict[str, Any]] = []
        df = read_csv(path, ["patientId", "x", "y", "width", "height", "Target"])
        bad = BadRows(path, bool(options.get("skip_bad", False)), skipped)
        target = parse_labels(df, ["Target"], bad, (0.0, 1.0), df["patientId"])["Target"]
        boxes = self._boxes(df, target, bad)
        self._check_groups(df, target, bad)
        keep = bad.drop(pd.DataFrame({"id": df["patientId"], "t": target, "b": boxes}))
        keep = keep[~keep["id"].isin({s["id"] for s in skipped})]
        groups = keep.groupby("id", sort=False)
        ids = list(groups.groups)
        index = make_index(
            {
                "image_id": ids,
                "path": [f"stage_2_train_images/{i}.dcm" for i in ids],
                "boxes": [[b for b in g["b"] if b is not None] for _, g in groups],
                "Pneumonia": groups["t"].max().reindex(ids).to_numpy(dtype=float),
            },
            self.label_names,
            len(ids),
        )
        counts = {
            "rows": len(df),
            "images": len(index),
            "positive": int((index["Pneumonia"] == 1).sum()),
            "boxes": int(index["boxes"].map(len).sum()),
            "skipped": len(skipped),
        }
        return ReadResult(index, skipped, counts)

    @staticmethod
    def _boxes(df: pd.DataFrame, target: pd.Series, bad: BadRows) -> list[list[float] | None]:
        coords = df[["x", "y", "width", "height"]].apply(lambda c: c.str.strip())
        num = coords.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        blank = (coords == "").to_numpy()
        out: list[list[float] | None] = []
        for pos in range(len(df)):
            pid = str(df["patientId"].iloc[pos])
            if target.iloc[pos] == 1:
                if np.isnan(num[pos]).any() or (num[pos, 2:] <= 0).any():
                    bad.bad(
                        pos,
                        f"Target 1 needs a box with x, y and positive width, height; got {coords.iloc[pos].tolist()}",
                        pid,
                    )
                    out.append(None)
                    continue
                x, y, w, h = num[pos]
                out.append([x, y, x + w, y + h])
            else:
                if not blank[pos].all():
                    bad.bad(pos, f"Target 0 row has box fields {coords.iloc[pos].tolist()}", pid)
                out.append(None)
        return out

    @staticmethod
    def _check_groups(df: pd.DataFrame, target: pd.Series, bad: BadRows) -> None:
        """A negative image must have exactly one row (a duplicated negative or mixed Target is an error)."""
        frame = pd.DataFrame({"id": df["patientId"].to_numpy(), "t": target.to_numpy()})
        sizes = frame.groupby("id", sort=False)["t"].agg(["size", "min", "max"])
        wrong = sizes[(sizes["min"] == 0) & (sizes["size"] > 1)].index.tolist()
        if wrong and not bad.skip_bad:
            raise DataFormatError(f"{bad.path}: duplicated image id(s) with a negative row: {', '.join(wrong[:10])}")
        for pid in wrong:
            for pos in np.flatnonzero((frame["id"] == pid).to_numpy()):
                bad.bad(int(pos), f"duplicated image id {pid!r} with a negative row", pid)

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """Unique patientIds sorted ascending; ``train_test_split(ids, test_size, random_state=0)`` ->
        (train, rest),
        then ``train_test_split(rest, test_size=0.5, random_state=0)`` -> (test, valid).
        ``options["test_size"]``
        defaults to 10,674 at the real size, else scaled to the number of images."""
        ids = sorted(index["image_id"].unique())
        test_size = options.get("test_size") or default_test_size(len(ids))
        mapping = sklearn_three_way(ids, test_size, int(options.get("random_state", 0)), self.name)
        return index["image_id"].map(mapping).rename("split")
