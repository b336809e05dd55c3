"""Object-CXR (MIDL 2020 foreign objects): ``train.csv`` / ``dev.csv`` (``image_name,annotation``) +
``train/#####.jpg``, ``dev/#####.jpg``.

An annotation is empty (negative) or objects separated by ``;``, each ``TYPE c1 c2 ...`` with integer pixels:
``0 x1 y1 x2 y2`` rectangle, ``1 x1 y1 x2 y2`` ellipse (by its bounding box), ``2 x1 y1 ... xn yn`` polygon.
Every object becomes a bounding box (xyxy) in ``boxes`` and a shape in ``shapes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, official_test_then_holdout, read_csv
from cxrbench.data.problems import Problems
from cxrbench.registry import DATASETS

TYPES = {0: "rect", 1: "ellipse", 2: "polygon"}


def parse_annotation(text: str) -> tuple[list[list[float]], list[dict[str, Any]]]:
    """(boxes xyxy, shapes) of one annotation string; ``ValueError`` naming the bad object otherwise."""
    boxes, shapes = [], []
    for k, obj in enumerate(p.strip() for p in text.split(";")):
        if not obj:
            continue
        try:
            values = [int(v) for v in obj.split()]
        except ValueError:
            raise ValueError(f"object {k} {obj!r}: coordinates must be integers") from None
        kind, coords = TYPES.get(values[0]), values[1:]
        if kind is None:
            raise ValueError(f"object {k} {obj!r}: type {values[0]} not in 0 (rect), 1 (ellipse), 2 (polygon)")
        if kind != "polygon" and len(coords) != 4:
            raise ValueError(f"object {k} {obj!r}: a {kind} needs 4 coordinates x1 y1 x2 y2, got {len(coords)}")
        if kind == "polygon" and (len(coords) < 6 or len(coords) % 2):
            raise ValueError(f"object {k} {obj!r}: a polygon needs an even number (>= 6) of coordinates")
        if min(coords) < 0:
            raise ValueError(f"object {k} {obj!r}: negative coordinate")
        xs, ys = coords[0::2], coords[1::2]
        box = [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"object {k} {obj!r}: empty box {box}")
        boxes.append(box)
        shapes.append(
            {"type": kind, "xy": [float(c) for c in coords]} if kind == "polygon" else {"type": kind, "xyxy": box}
        )
    return boxes, shapes


@DATASETS.register("object_cxr")
class ObjectCXR(DatasetFormat):
    name = "object_cxr"
    title = "Object-CXR (MIDL 2020)"
    label_names = ("Foreign object",)
    label_kind = "multilabel"
    has_boxes = True
    has_masks = True
    paper_split_sizes = (6400, 1600, 1000)
    download_hint = (
        "Download the object-CXR challenge data and put train.csv, dev.csv, train/ and dev/ in the raw "
        "directory "
        "(params key data.datasets.object_cxr.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        files = self.require(raw_dir, "train.csv", "dev.csv")
        problems = Problems(Path(raw_dir))
        parts = [self._read(p, folder, problems) for p, folder in zip(files, ("train", "dev"), strict=True)]
        frame = pd.concat(parts, ignore_index=True)
        for value in frame["image_id"][frame["image_id"].duplicated(keep="first")].unique():
            lines = frame.loc[frame["image_id"] == value, ["table", "line"]].to_numpy().tolist()
            problems.add("duplicate_id", f"image_name on {len(lines)} lines {lines} (the first is kept)",
                         table=Path(raw_dir) / lines[1][0], line=lines[1][1], image=value)
        frame = frame[~frame["image_id"].duplicated(keep="first")]
        index = make_index({c: frame[c] for c in frame.columns}, self.label_names, len(frame))
        counts = {
            "images": len(index),
            "positive": int(index["Foreign object"].sum()),
            "objects": int(index["boxes"].map(len).sum()),
        }
        return ReadResult(index, problems.items, counts)

    @staticmethod
    def _read(path: Path, folder: str, problems: Problems) -> pd.DataFrame:
        df = read_csv(path, ["image_name", "annotation"])
        bad = BadRows(path, problems)
        rows = []
        for pos, (name, ann) in enumerate(zip(df["image_name"].str.strip(), df["annotation"], strict=True)):
            name = name or f"?{path.name}:{pos + 2}"
            try:
                boxes, shapes = parse_annotation(ann)
            except ValueError as err:
                bad.bad(pos, "malformed_annotation", str(err), name, "annotation")
                boxes, shapes = [], []
            if name.startswith("?"):
                bad.bad(pos, "no_image_id", "empty image_name", name, "image_name")
            rows.append(
                {
                    "image_id": name,
                    "path": None if name.startswith("?") else f"{folder}/{name}",
                    "boxes": boxes,
                    "shapes": shapes,
                    "official_split": "train" if folder == "train" else "test",
                    "order": pos,
                    "line": pos + 2,
                    "table": path.name,
                    "Foreign object": float(bool(boxes)),
                }
            )
        columns = ["image_id", "path", "boxes", "shapes", "official_split", "order", "line", "table", "Foreign object"]
        return pd.DataFrame(rows, columns=columns)

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """dev.csv = test; rows of train.csv in file order: ``train_test_split(rows, test_size=0.2,
        random_state=0)`` -> (train, valid). ``options["test_size"]`` (the released benchmark code used
        0.1)."""
        return official_test_then_holdout(
            index, random_state=int(options.get("random_state", 0)), test_size=options.get("test_size") or 0.2
        )
