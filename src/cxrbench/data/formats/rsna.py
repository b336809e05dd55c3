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

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, parse_labels, read_csv
from cxrbench.data.problems import Problems
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
    main_table = "stage_2_train_labels.csv"
    download_hint = (
        "Download the Kaggle 'rsna-pneumonia-detection-challenge' data (stage 2) and put "
        "stage_2_train_labels.csv and "
        "the stage_2_train_images/ folder in the raw directory (params key data.datasets.rsna.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        (path,) = self.require(raw_dir, LABELS)
        self.require(raw_dir, "stage_2_train_images")
        problems = Problems(Path(raw_dir))
        df = read_csv(path, ["patientId", "x", "y", "width", "height", "Target"])
        df["patientId"] = [i.strip() or f"?line{k + 2}" for k, i in enumerate(df["patientId"])]
        bad = BadRows(path, problems)
        for pos in np.flatnonzero(df["patientId"].str.startswith("?line").to_numpy()):
            bad.bad(int(pos), "no_image_id", "empty patientId", df["patientId"].iloc[pos], "patientId")
        target = parse_labels(df, ["Target"], bad, (0.0, 1.0), df["patientId"])["Target"]
        boxes = self._boxes(df, target, bad)
        self._check_groups(df, target, problems, path)
        frame = pd.DataFrame({"id": df["patientId"], "t": target, "b": boxes, "line": np.arange(len(df)) + 2})
        groups = frame.groupby("id", sort=False)
        ids = list(groups.groups)
        index = make_index(
            {
                "image_id": ids,
                "path": [f"stage_2_train_images/{i}.dcm" for i in ids],
                "boxes": [[b for b in g["b"] if b is not None] for _, g in groups],
                "line": groups["line"].min().reindex(ids).to_numpy(),
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
        }
        return ReadResult(index, problems.items, counts)

    @staticmethod
    def _boxes(df: pd.DataFrame, target: pd.Series, bad: BadRows) -> list[list[float] | None]:
        coords = df[["x", "y", "width", "height"]].apply(lambda c: c.str.strip())
        num = coords.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        blank = (coords == "").to_numpy()
        out: list[list[float] | None] = []
        for pos in range(len(df)):
            pid, got = str(df["patientId"].iloc[pos]), coords.iloc[pos].tolist()
            box = None
            if target.iloc[pos] == 1:
                if np.isnan(num[pos]).any() or (num[pos, 2:] <= 0).any():
                    detail = f"Target 1 needs numbers x, y and positive width, height; got {got}"
                    bad.bad(pos, "bad_box", detail, pid, "x,y,width,height")
                else:
                    x, y, w, h = num[pos]
                    box = [x, y, x + w, y + h]
            elif target.iloc[pos] == 0 and not blank[pos].all():
                bad.bad(pos, "bad_value", f"Target 0 row has box fields {got}; expected them blank", pid,
                        "x,y,width,height")
            out.append(box)
        return out

    @staticmethod
    def _check_groups(df: pd.DataFrame, target: pd.Series, problems: Problems, path: Path) -> None:
        """A negative image must have exactly one row (a repeated negative or a mixed Target is a conflict)."""
        frame = pd.DataFrame({"id": df["patientId"].to_numpy(), "t": target.to_numpy()})
        sizes = frame.groupby("id", sort=False)["t"].agg(["size", "min"])
        for pid in sizes[(sizes["min"] == 0) & (sizes["size"] > 1)].index:
            lines = (np.flatnonzero((frame["id"] == pid).to_numpy()) + 2).tolist()
            problems.add("conflicting_rows", f"a negative (Target 0) row among {len(lines)} rows (lines {lines}); "
                         "expected one row per negative image", table=path, line=lines[1], image=pid)

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """Unique patientIds sorted ascending; ``train_test_split(ids, test_size, random_state=0)`` ->
        (train, rest),
        then ``train_test_split(rest, test_size=0.5, random_state=0)`` -> (test, valid).
        ``options["test_size"]``
        defaults to 10,674 at the real size, else scaled to the number of images; ``options["valid_size"]`` (the
        second call's test_size) to 0.5."""
        ids = sorted(index["image_id"].unique())
        test_size = options.get("test_size") or default_test_size(len(ids))
        mapping = sklearn_three_way(ids, test_size, int(options.get("random_state", 0)), self.name,
                                    valid_size=options.get("valid_size") or 0.5)
        return index["image_id"].map(mapping).rename("split")
