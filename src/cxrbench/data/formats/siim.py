"""SIIM-ACR Pneumothorax: ``train-rle.csv`` + ``dicom-images-train/<Study>/<Series>/<SOP>.dcm``.

Header ``ImageId, EncodedPixels`` (leading space in the second name; names are stripped). One row per
pneumothorax
instance, OR-ed per image (kept as a list of ``{"type": "rle", "rle": ...}`` shapes); ``-1`` (or `` -1``) =
none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, read_csv
from cxrbench.data.rle import EMPTY, rle_check
from cxrbench.data.splits import sklearn_three_way
from cxrbench.registry import DATASETS

LABELS, IMAGES = "train-rle.csv", "dicom-images-train"


def dicom_paths(root: Path) -> dict[str, str]:
    """{file stem (SOPInstanceUID): path relative to root's parent} for every .dcm under ``root``."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root.parent)
        for f in files:
            if f.endswith(".dcm"):
                out[f[:-4]] = (rel / f).as_posix()
    return out


def row_split_sizes(row_ids: list[str], random_state: int = 0) -> dict[str, int]:
    """What the reference code's ROW-level split gives (images per split, images in two or more splits)."""
    positions = list(range(len(row_ids)))
    try:
        mapping = sklearn_three_way(positions, 0.3, random_state, "siim rows")
    except ValueError:
        return {}  # too few rows to split
    per_split = {s: {row_ids[p] for p, v in mapping.items() if v == s} for s in ("train", "valid", "test")}
    leaked = sum(1 for i in set(row_ids) if sum(i in per_split[s] for s in per_split) > 1)
    out = {f"row_split_{s}_images": len(v) for s, v in per_split.items()}
    out["row_split_images_in_two_splits"] = leaked
    return out


@DATASETS.register("siim")
class SIIMPneumothorax(DatasetFormat):
    name = "siim"
    title = "SIIM-ACR Pneumothorax"
    label_names = ("Pneumothorax",)
    label_kind = "multilabel"
    has_masks = True
    paper_split_sizes = (8433, 1807, 1807)
    download_hint = (
        "Download the SIIM-ACR Pneumothorax Segmentation data (train-rle.csv and the dicom-images-train/ "
        "tree of "
        "<Study>/<Series>/<SOP>.dcm) into the raw directory (params key data.datasets.siim.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        path, images = self.require(raw_dir, LABELS, IMAGES)
        skipped: list[dict[str, Any]] = []
        df = read_csv(path, ["ImageId", "EncodedPixels"], strip_names=True)
        bad = BadRows(path, bool(options.get("skip_bad", False)), skipped)
        ids = df["ImageId"].str.strip()
        rles = df["EncodedPixels"].str.strip()
        for pos, (iid, rle) in enumerate(zip(ids, rles, strict=True)):
            if iid == "":
                bad.bad(pos, "empty ImageId", None)
                continue
            try:
                rle_check(rle)
            except ValueError as err:
                bad.bad(pos, f"column 'EncodedPixels' of {iid!r}: {err}", iid)
        bad_ids = {s["id"] for s in skipped}
        frame = bad.drop(pd.DataFrame({"id": ids, "rle": rles}))
        frame = frame[~frame["id"].isin(bad_ids)]
        counts = {"rows": len(df), **row_split_sizes(list(frame["id"]), int(options.get("random_state", 0)))}
        index = self._index(frame, dicom_paths(images), skipped, path)
        counts.update(images=len(index), positive=int(index["Pneumothorax"].sum()), skipped=len(skipped))
        return ReadResult(index, skipped, counts)

    def _index(self, frame: pd.DataFrame, files: dict[str, str], skipped: list, path: Path) -> pd.DataFrame:
        groups = frame.groupby("id", sort=False)["rle"]
        ids, paths, shapes, order = [], [], [], []
        for k, (iid, rles) in enumerate(groups):
            if iid not in files:
                skipped.append({"file": str(path), "line": None, "id": iid, "reason": f"no {IMAGES}/**/{iid}.dcm"})
                continue
            ids.append(iid)
            paths.append(files[iid])
            shapes.append([{"type": "rle", "rle": r} for r in rles if r not in (EMPTY, "")])
            order.append(k)
        return make_index(
            {
                "image_id": ids,
                "path": paths,
                "shapes": shapes,
                "order": order,
                "Pneumothorax": np.array([float(bool(s)) for s in shapes]),
            },
            self.label_names,
            len(ids),
        )

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The reference calls applied to unique ImageIds in order of first appearance (no image leaks):
        ``train_test_split(ids, test_size=0.3, random_state=0)`` -> (train, rest), then rest halved with
        ``test_size=0.5`` -> (test, valid). ``options["test_size"]`` overrides 0.3."""
        ids = list(index.sort_values("order")["image_id"]) if "order" in index else list(index["image_id"])
        mapping = sklearn_three_way(
            ids, options.get("test_size") or 0.3, int(options.get("random_state", 0)), self.name
        )
        return index["image_id"].map(mapping).rename("split")
