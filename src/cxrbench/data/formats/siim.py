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
from cxrbench.data.problems import Problems
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
    main_table = "train-rle.csv"
    download_hint = (
        "Download the SIIM-ACR Pneumothorax Segmentation data (train-rle.csv and the dicom-images-train/ "
        "tree of "
        "<Study>/<Series>/<SOP>.dcm) into the raw directory (params key data.datasets.siim.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        path, images = self.require(raw_dir, LABELS, IMAGES)
        problems = Problems(Path(raw_dir))
        df = read_csv(path, ["ImageId", "EncodedPixels"], strip_names=True)
        bad = BadRows(path, problems)
        ids = [i if i else f"?line{pos + 2}" for pos, i in enumerate(df["ImageId"].str.strip())]
        rles = df["EncodedPixels"].str.strip()
        for pos, (iid, rle) in enumerate(zip(ids, rles, strict=True)):
            if iid.startswith("?line"):
                bad.bad(pos, "no_image_id", "empty ImageId; expected the SOPInstanceUID", iid, "ImageId")
                continue
            try:
                rle_check(rle)
            except ValueError as err:
                bad.bad(pos, "malformed_rle", str(err), iid, "EncodedPixels")
        ok = ~np.isin(np.arange(len(df)), list(bad.rows))
        frame = pd.DataFrame({"id": ids, "rle": rles, "ok": ok, "line": np.arange(len(df)) + 2})
        counts = {"rows": len(df), **row_split_sizes(ids, int(options.get("random_state", 0)))}
        files = dicom_paths(images)
        index = self._index(frame, files, problems, path)
        counts.update(
            images=len(index),
            positive=int(index["Pneumothorax"].sum()),
            dicoms_without_row=len(set(files) - set(ids)),
        )
        return ReadResult(index, problems.items, counts)

    def _index(self, frame: pd.DataFrame, files: dict[str, str], problems: Problems, path: Path) -> pd.DataFrame:
        """One row per ImageId (order of first appearance), whether or not its DICOM is present."""
        groups = frame.groupby("id", sort=False)
        ids, paths, shapes, lines = [], [], [], []
        for iid, g in groups:
            ids.append(iid)
            paths.append(files.get(iid))
            shapes.append([{"type": "rle", "rle": r} for r, ok in zip(g["rle"], g["ok"], strict=True)
                           if ok and r not in (EMPTY, "")])
            lines.append(int(g["line"].iloc[0]))
            if iid not in files and not iid.startswith("?line"):
                problems.add("missing_file", f"no {IMAGES}/<Study>/<Series>/{iid}.dcm in the download",
                             table=path, line=lines[-1], image=iid)
        return make_index(
            {
                "image_id": ids,
                "path": paths,
                "shapes": shapes,
                "order": list(range(len(ids))),
                "line": lines,
                "Pneumothorax": np.array([float(bool(s)) for s in shapes]),
            },
            self.label_names,
            len(ids),
        )

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The reference calls applied to unique ImageIds in order of first appearance (no image leaks):
        ``train_test_split(ids, test_size=0.3, random_state=0)`` -> (train, rest), then rest halved with
        ``test_size=0.5`` -> (test, valid). ``options["test_size"]`` overrides 0.3, ``options["valid_size"]`` 0.5."""
        ids = list(index.sort_values("order")["image_id"]) if "order" in index else list(index["image_id"])
        mapping = sklearn_three_way(
            ids, options.get("test_size") or 0.3, int(options.get("random_state", 0)), self.name,
            valid_size=options.get("valid_size") or 0.5,
        )
        return index["image_id"].map(mapping).rename("split")
