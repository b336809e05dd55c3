"""COVIDx (9A): ``train_COVIDx9A.txt`` / ``test_COVIDx9A.txt`` (4 space-separated fields, no header) +
``train/<file>``, ``test/<file>``. Classes normal / pneumonia / COVID-19 (indices 0 / 1 / 2), one-hot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.data.formats._base import DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, make_index, official_test_then_holdout, read_text
from cxrbench.data.problems import Problems
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
        problems = Problems(Path(raw_dir))
        frames = [self._read_list(p, split, problems) for p, split in zip(files, ("train", "test"), strict=True)]
        frame = pd.concat(frames, ignore_index=True)
        for value in frame["file"][frame["file"].duplicated(keep="first")].unique():
            lines = frame.loc[frame["file"] == value, ["list", "line"]].to_numpy().tolist()
            problems.add("duplicate_id", f"filename on {len(lines)} lines {lines} (the first is kept)",
                         table=Path(raw_dir) / lines[1][0], line=lines[1][1], image=value)
        frame = frame[~frame["file"].duplicated(keep="first")]
        onehot = {c: (frame["cls"] == c).to_numpy(dtype=float) for c in CLASSES}
        index = make_index(
            {
                "image_id": frame["file"],
                "path": (frame["folder"] + "/" + frame["file"]).where(~frame["file"].str.startswith("?"), None),
                "patient": frame["patient"],
                "official_split": frame["folder"],
                "data_source": frame["source"],
                "order": frame["line"],
                "line": frame["line"],
                "table": frame["list"],
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
        counts.update(images=len(index))
        return ReadResult(index, problems.items, counts)

    @staticmethod
    def _read_list(path: Path, folder: str, problems: Problems) -> pd.DataFrame:
        """The rows of one list file; a malformed line stays as a placeholder row (its position counts in the
        reference split), flagged."""
        bad = BadRows(path, problems, first_line=1)
        rows = []
        text = read_text(path)
        if not text.strip():
            raise DataFormatError(f"{path}: empty label file; expected lines 'patient_id filename class source'")
        for pos, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 4:
                ident = f"?{path.name}:{pos + 1}"
                bad.bad(pos, "malformed_line", f"{len(fields)} space-separated fields; expected 4 "
                        "'patient_id filename class source'", ident)
                fields = [None, ident, None, None]
            elif fields[2] not in CLASSES:
                bad.bad(pos, "bad_label", f"class {fields[2]!r}; expected one of {list(CLASSES)}", fields[1],
                        "class (3rd field)")
            rows.append((*fields, folder, pos + 1, path.name))
        return pd.DataFrame(rows, columns=["patient", "file", "cls", "source", "folder", "line", "list"])

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """Rows of the train file in file order: ``train_test_split(rows, train_size=0.8, random_state=0)`` ->
        (train, valid); the official test file = test. ``options["train_size"]`` overrides 0.8."""
        return official_test_then_holdout(
            index, random_state=int(options.get("random_state", 0)), train_size=options.get("train_size") or 0.8
        )
