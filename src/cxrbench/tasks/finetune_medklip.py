"""Fine-tuned classification on NIH ChestX-ray14 with MedKLIP's data split (G2D Table 7, MedKLIP vs G2D).

The fine-tuning of ``finetune`` (encoder + linear layer, the same engine and views), on the train / valid / test
images that MedKLIP's split files list instead of the prepared store's split.

What is public (read in MediaBrain-SJTU/MedKLIP): the repository ships ONE ChestX-ray14 file,
``Sample_zero-shot_Classification_CXR14/data_sample/test.csv`` (25,596 rows: the official ``test_list.txt``),
read by ``dataset/dataset.py`` ``Chestxray14_Dataset`` (image path from column 0, the 14 labels from column 3 on).
Its train / valid files (``train_file`` / ``valid_file`` in the fine-tuning configs) are not in the repository, and
its fine-tuning datasets draw their training fraction from the unseeded global RNG
(``Sample_Finetuning_SIIMACR/I1_classification/dataset/dataset_siim_acr.py`` ``SIIM_ACR_Dataset.__init__``), so
MedKLIP's training subsets cannot be recovered either. Hence: with ``split_files`` unset the task is not
applicable and says what to provide; given the three files (a user who has them), it runs.

Split files: MedKLIP's CSV format, a header with ``img_path``, ``Image Index``, ``Finding Label`` (then the label
columns, not read: the labels come from the prepared store, i.e. from ``Data_Entry_2017.csv``), one image per line.
Images are matched to store rows by their salted id (``data.problems.hash_id``). Training fractions are drawn over
MedKLIP's train images with ``data.splits.draw_fractions`` (nested, stratified, ``fraction_seed``), the draw the
prepare stage makes for the store's own split, and recorded with the files' hashes in ``split.json``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.registry import TASKS
from cxrbench.tasks._base import NotApplicable
from cxrbench.tasks._common import binary_labels
from cxrbench.tasks.finetune import Finetune

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
COLUMNS = ("img_path", "Image Index", "Finding Label")
ID_SALT = "cxrbench"  # ``data.prepare.prepare_dataset``'s salt (the CLI passes no other)
KEY = "evaluate.tasks.finetune_medklip.split_files"
NOT_PUBLIC = (
    "MedKLIP's ChestX-ray14 fine-tuning split is not public: MediaBrain-SJTU/MedKLIP ships only its test list "
    "(Sample_zero-shot_Classification_CXR14/data_sample/test.csv, the 25,596 images of the official test_list.txt), "
    f"not its train / valid files; set {KEY}.train / .valid / .test to MedKLIP-format CSVs (header img_path, "
    "Image Index, Finding Label, label columns) to run this task"
)


class SplitFileError(ValueError):
    """A MedKLIP split file that cannot be read (names the file, line and column)."""


def read_split_file(path: str | Path, key: str = KEY) -> list[str]:
    """Image names (``Image Index``) of one MedKLIP split CSV, in file order.

    Raises FileNotFoundError naming ``path`` and the parameter ``key``; SplitFileError for a header without the
    MedKLIP columns, a line with an empty ``Image Index`` or an image listed twice (both lines named)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MedKLIP split file (parameter {key}); provide MedKLIP's CSV there")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SplitFileError(f"{path}: line 1: header lacks column(s) {missing}; expected MedKLIP's {list(COLUMNS)}")
    col, seen, names = header.index("Image Index"), {}, []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        name = row[col].strip() if col < len(row) else ""
        if not name:
            raise SplitFileError(f"{path}: line {line}: column 'Image Index' is empty; expected an image file name")
        if name in seen:
            raise SplitFileError(f"{path}: line {line}: image {name!r} already on line {seen[name]}")
        seen[name] = line
        names.append(name)
    return names


def split_files(p: Mapping[str, Any]) -> dict[str, str] | None:
    """The three configured paths, or None when none is set; a partial setting is an error naming the unset keys."""
    files = dict(p.get("split_files") or {})
    unset = [s for s in SPLITS if not files.get(s)]
    if len(unset) == len(SPLITS):
        return None
    if unset:
        raise ValueError(f"{KEY}: {unset} not set; MedKLIP's split needs all of {list(SPLITS)}")
    return {s: str(files[s]) for s in SPLITS}


def medklip_rows(store: Any, files: Mapping[str, str], max_missing: float) -> tuple[dict[str, np.ndarray], dict]:
    """({split: store rows, in file order}, report). An image in two files is an error naming both; images the
    store lacks are counted and listed (hashed) in the report, and more than ``max_missing`` of a split is an
    error."""
    row_of = {str(i): r for r, i in enumerate(store.manifest["image_id"].tolist())}
    names = {s: read_split_file(files[s], f"{KEY}.{s}") for s in SPLITS}
    owner: dict[str, str] = {}
    rows, report = {}, {"files": {}, "missing": {}}
    for s in SPLITS:
        for n in names[s]:
            if n in owner:
                raise SplitFileError(f"{files[s]}: image {n!r} is also in {files[owner[n]]} ({owner[n]} split)")
            owner[n] = s
        hashed = [hash_name(n) for n in names[s]]
        lost = [h for h in hashed if h not in row_of]
        if len(lost) > max_missing * max(len(hashed), 1):
            raise ValueError(f"{files[s]}: {len(lost)} of {len(hashed)} images are not in the prepared store "
                             f"{getattr(store, 'root', store.name)} (max_missing_fraction {max_missing})")
        if lost:
            log.warning("%s: %d images not in the prepared store (listed in split.json)", files[s], len(lost))
        rows[s] = np.asarray([row_of[h] for h in hashed if h in row_of], dtype=np.int64)
        report["files"][s] = {"path": files[s], "sha256": file_sha256(files[s]), "listed": len(hashed)}
        report["missing"][s] = lost
    return rows, report


def hash_name(name: str) -> str:
    from cxrbench.data.problems import hash_id

    return hash_id(name, ID_SALT)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fraction_rows(store: Any, train: np.ndarray, fraction: int, p: Mapping[str, Any]) -> np.ndarray:
    """Rows of the nested, stratified ``fraction`` of MedKLIP's train rows (``draw_fractions``, ``fraction_seed``,
    at least ``min_positives`` positives of each label), sorted."""
    from cxrbench.data.splits import draw_fractions

    if fraction == 100:
        return np.sort(train)
    strata = binary_labels(store.labels(train))
    ids = [str(r) for r in train]
    drawn = draw_fractions(ids, (fraction,), seed=int(p.get("fraction_seed", 0)), strata=strata,
                           min_positives=int(p.get("min_positives", 1)), name="nih (MedKLIP split)")
    return np.sort(np.asarray(drawn[fraction], dtype=np.int64))


@TASKS.register("finetune_medklip")
class FinetuneMedKLIP(Finetune):
    fraction_is_store_rows = False  # its fractions are drawn over MedKLIP's train list, not the store's
    name = "finetune_medklip"
    relative_cost = 15
    datasets = ("nih",)

    def check_method(self, method_cls: Any) -> None:
        super().check_method(method_cls)
        if split_files(self.params) is None:
            raise NotApplicable(NOT_PUBLIC)

    def split_rows(self, data: Any, fraction: int, p: dict[str, Any], out_dir: Path) -> dict[str, np.ndarray]:
        rows, report = medklip_rows(data, split_files(p), float(p.get("max_missing_fraction", 0.001)))
        rows["train"] = fraction_rows(data, rows["train"], fraction, p)
        report.update(fraction=int(fraction), sizes={s: int(len(r)) for s, r in rows.items()})
        _write_json(Path(out_dir) / "split.json", report)
        return rows

    def fit_fingerprint(self, p: dict[str, Any]) -> dict[str, Any] | None:
        files = split_files(p) or {}
        return {"medklip_split": {s: file_sha256(f) for s, f in files.items()}}


def _write_json(path: Path, obj: Any) -> None:
    from cxrbench.evaluate import write_json_atomic

    write_json_atomic(path, obj)
