"""The contract between a dataset reader (one file per download layout) and the generic preparation step.

A reader turns a directory exactly as a user downloaded it into a *raw index*: a pandas DataFrame, one row per image,
with the columns below. It reads label tables, never pixels. ``cxrbench.data.prepare`` then decodes the images (in
parallel, resumable), resizes them into the prepared store, hashes the patient ids, assigns splits and fractions.

Raw index columns (``RAW_COLUMNS``; a reader may add more, e.g. ``study_id``, ``view``):

==================  =========================================================================================
``image_id``        str, the dataset's own image id (MIMIC dicom_id, CheXpert Path, NIH Image Index, RSNA patientId,
                    SIIM ImageId, COVIDx filename, Object-CXR image_name). Unique: duplicates are an error.
``path``            str, image file relative to the raw directory.
``patient``         str, raw patient id (used for patient-disjoint splits, then hashed; never written out raw).
``official_split``  "train" / "valid" / "test" where the download ships a split, else None.
label columns       one float column per name in ``label_names`` (1.0 / 0.0 / NaN unknown), already mapped per the
                    reference protocol (e.g. CheXpert U-Ones/U-Zeros). Multi-class datasets are one-hot.
``boxes``           list of [x1, y1, x2, y2] float boxes in original pixel coordinates (empty list if none).
``shapes``          list of dicts describing mask shapes in original pixels: {"type": "rle", "rle": str} (SIIM,
                    column-major), {"type": "rect"|"ellipse", "xyxy": [...]}, {"type": "polygon", "xy": [x1,y1,...]}.
``text``            str report / phrase text where the dataset has one (MIMIC: impression + findings), else None.
``protocol_drop``   optional: the ``problems.KINDS`` name of a protocol exclusion (e.g. CheXpert 5x200), else None.
``line``, ``table``  optional: 1-based line of the row and its label table (relative to the raw directory; default
                    the reader's ``main_table``), named in the messages of problems found while preparing.
==================  =========================================================================================

A row whose values are bad stays in the index (its problem names it) so that the split, computed over the label
tables as published, never depends on which rows or files are usable; ``prepare`` removes it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

RAW_COLUMNS = ("image_id", "path", "patient", "official_split", "boxes", "shapes", "text")
SPLITS = ("train", "valid", "test")


class DataFormatError(ValueError):
    """Bad input in a downloaded dataset; the message names the file, row or column."""


@dataclass
class ReadResult:
    """A raw index (every image the label tables list, bad ones included), the problems found while reading
    (``cxrbench.data.problems.Problem``; ``problem.image`` names the index row affected) and reader counts."""

    index: pd.DataFrame
    problems: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class DatasetFormat:
    """Base class of a dataset reader. Subclasses are registered with ``@DATASETS.register(name)``.

    Class attributes describe the dataset; ``read`` and ``reference_split`` do the work.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # human name, e.g. "RSNA Pneumonia (Kaggle stage 2)"
    label_names: ClassVar[tuple[str, ...]] = ()
    label_kind: ClassVar[str] = "multilabel"  # "multilabel" | "multiclass" | "none"
    has_boxes: ClassVar[bool] = False
    has_masks: ClassVar[bool] = False
    has_text: ClassVar[bool] = False
    #: split sizes printed by the papers (train, valid, test) for the reference protocol, for the side-by-side report
    paper_split_sizes: ClassVar[tuple[int, int, int] | None] = None
    #: what a user must download, shown when the raw directory is missing or incomplete
    download_hint: ClassVar[str] = ""
    #: the table whose ``line`` the raw index records, and where the reference split comes from (for messages)
    main_table: ClassVar[str] = ""
    split_source: ClassVar[str] = ""

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        """Read the label tables of ``raw_dir`` into a raw index (no pixel decoding)."""
        raise NotImplementedError

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """The papers' split ("train"/"valid"/"test") for every row of ``index``, index-aligned."""
        raise NotImplementedError

    def require(self, raw_dir: Path, *names: str) -> list[Path]:
        """Paths of required files under ``raw_dir``; a missing one raises a message saying what to download."""
        paths = [Path(raw_dir) / n for n in names]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{self.title or self.name}: missing {', '.join(missing)}. {self.download_hint}".strip()
            )
        return paths
