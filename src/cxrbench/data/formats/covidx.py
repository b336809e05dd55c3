"""COVIDx (9A): ``train_COVIDx9A.txt`` / ``test_COVIDx9A.txt`` (4 space-separated fields, no header) +
``train/<file>``, ``test/<file>``. Classes normal / pneumonia / COVID-19 (indices 0 / 1 / 2), one-hot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.data.formats._base import DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, check_unique, make_index, official_test_then_holdout
from cxrbench.registry import DATASETS

CLASSES = ("normal", "pneumonia", "COVID-19")


@DATASETS.register("covidx")
class COVIDx(DatasetFormat):
    name = "covidx"
    title = "COVIDx (9A)"
    label_names = CLASSES
    label_kind = "multiclass"
    paper_split_sizes = (23988, 5998, 400)
    download_hint = (
        "Download COVIDx (version 9A) and put train/, test/, train_COVIDx9A.txt and test_COVIDx9A.txt in "
        "the raw "
        "directory (params key data.datasets.covidx.raw; other versions: options train_list / test_list)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        names = options.get("train_list", "train_COVIDx9A.txt"), options.get("test_list", "test_COVIDx9A.txt")
        files = self.require(raw_dir, *names)
        skipped: list[dict[str, Any]] = []
        skip_bad = bool(options.get("skip_bad", False))
        frames = [
            self._read_list(p, split, skip_bad, skipped) for p, split in zip(files, ("train", "test"), strict=True)
        ]
        frame = pd.concat(frames, ignore_index=True)
        bad = BadRows(files[0].parent / " + ".join(names), skip_bad, skipped)
        check_unique(frame["file"], bad, "filename")
        frame = bad.drop(frame)
        onehot = {c: (frame["cls"] == c).to_numpy(dtype=float) for c in CLASSES}
        index = make_index(
            {
                "image_id": frame["file"],
                "path": frame["folder"] + "/" + frame["file"],
                "patient": frame["patient"],
                "official_split": frame["folder"],
                "data_source": frame["source"],
                "order": frame["line"],
                **onehot,
            },
            self.label_names,
            len(frame),
        )
        counts = {
            f"{s}_{c}": int(((index["official_split"] == s) & (index[c] == 1)).sum())
            for s in ("train", "test")
            for c in CLASSES
        }
        counts.update(images=len(index), skipped=len(skipped))
        return ReadResult(index, skipped, counts)

    @staticmethod
    def _read_list(path: Path, folder: str, skip_bad: bool, skipped: list) -> pd.DataFrame:
        bad = BadRows(path, skip_bad, skipped, first_line=1)
        rows = []
        for pos, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 4:
                bad.bad(
                    pos,
                    f"expected 4 space-separated fields 'patient_id filename class source', got {len(fields)}",
                )
            elif fields[2] not in CLASSES:
                bad.bad(pos, f"class {fields[2]!r} not in {list(CLASSES)}", fields[1])
            else:
                rows.append((fields[0], fields[1], fields[2], fields[3], folder, pos))
        if not rows and not path.read_text().strip():
            raise DataFormatError(f"{path}: empty label file")
        return pd.DataFrame(rows, columns=["patient", "file", "cls", "source", "folder", "line"])

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """Rows of the train file in file order: ``train_test_split(rows, train_size=0.8, random_state=0)`` ->
        (train, valid); the official test file = test. ``options["train_size"]`` overrides 0.8."""
        return official_test_then_holdout(
            index, random_state=int(options.get("random_state", 0)), train_size=options.get("train_size") or 0.8
        )
