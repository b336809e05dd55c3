"""Every fault of a download, collected in one pass, counted by kind and shown to the user.

A reader never raises on a bad row: it records a :class:`Problem` and keeps going, so one run reports every bad
file and row. ``cxrbench.data.prepare`` adds the faults only it can see (missing or undecodable image files, rows
without a split, boxes outside the image), then either fails with the whole list (strict, the default) or drops the
affected images or boxes (``skip_bad``), always printing the table of kinds.

Each kind is registered in ``KINDS`` with its effect:

- ``"image"``: the image cannot be used and is removed from its split (counted per split, ``max_skipped_fraction``);
- ``"box"`` / ``"row"``: one annotation or one row of a secondary table is lost, the image stays;
- ``"fixed"``: the value is repaired the documented way (a box clipped to the image), counted, never an error;
- ``"protocol"``: a drop the reference protocol itself requires (the CheXpert 5x200 set, MIMIC studies without
  findings/impression, lateral views), counted under its own name, never an error.

Privacy: on the console a problem names the label file, the line and the raw image id or image file (so the user can
find it); in ``meta.json`` (versioned by DVC) it names only the label table, the line, the column and a salted hash
of the image id (``hash_id``), never an image path (MIMIC, CheXpert and NIH paths carry patient ids).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.data.formats._base import DataFormatError

#: kind -> (effect, one-line description shown in the summary table and in data/README.md)
KINDS: dict[str, tuple[str, str]] = {
    "missing_file": ("image", "image file listed in the labels is not in the download"),
    "undecodable": ("image", "image file cannot be decoded (truncated, not an image, unsupported codec)"),
    "bad_label": ("image", "label value outside the allowed set"),
    "bad_value": ("image", "other field of the row has an invalid value"),
    "bad_box": ("image", "box not finite or with non-positive width/height"),
    "duplicate_id": ("row", "image id listed on several rows (the first row is kept, the others dropped)"),
    "conflicting_rows": ("image", "rows of one image disagree (e.g. a negative row beside others)"),
    "malformed_rle": ("image", "EncodedPixels is not valid run-length encoding"),
    "mask_error": ("image", "mask does not fit the image (RLE runs past the last pixel)"),
    "malformed_annotation": ("image", "annotation string cannot be parsed into objects"),
    "malformed_line": ("image", "line of a list file has the wrong number of fields"),
    "no_image_id": ("image", "row without an image id"),
    "no_split": ("image", "image in no split (neither split list / no split-file row)"),
    "in_both_lists": ("image", "image in both the train and the test list"),
    "report_missing": ("image", "report file of the study is missing"),
    "report_empty": ("image", "report file of the study is empty"),
    "report_unreadable": ("image", "report file is binary or not UTF-8 text"),
    "box_bad_row": ("box", "row of the box table is invalid (label or coordinates); the box is lost"),
    "box_unknown_image": ("box", "box for an image id not in the image table; the box is lost"),
    "box_outside_image": ("box", "box has no area inside the image; the box is dropped"),
    "box_clipped": ("fixed", "box extends past the image border; clipped to the image"),
    "bad_metadata": ("fixed", "patient sex or age not a valid value (e.g. NIH ages above 122); unknown for the metadata "
                              "task, the image stays"),
    "protocol_chexpert_5x200": ("protocol", "CheXpert 5x200 set removed from training (reference protocol)"),
    "protocol_non_frontal": ("protocol", "lateral / non-frontal view not used (frontal images only)"),
    "protocol_no_findings_impression": ("protocol", "MIMIC study whose report has neither FINDINGS nor IMPRESSION"),
    "protocol_ms_cxr_exclusion": ("protocol", "MIMIC image of an MS-CXR patient excluded from pretraining"),
}
EFFECTS = ("image", "box", "row", "fixed", "protocol")
LOSSES = ("image", "box", "row")


def hash_id(value: Any, salt: str) -> str:
    """First 16 hex digits of sha256(salt + NUL + "id" + NUL + value): how versioned files refer to an image."""
    return hashlib.sha256(f"{salt}\0id\0{value}".encode()).hexdigest()[:16]


@dataclass
class Problem:
    """One fault. ``table``: the label/list file (relative to the raw directory) and ``line`` (1-based, header =
    line 1) where the row is; ``image``: the raw image id it affects (None for a secondary-table row); ``path``: the
    image file (console only); ``detail``: what is wrong and what was expected, free of ids and paths."""

    kind: str
    detail: str
    table: str | None = None
    line: int | None = None
    column: str | None = None
    image: str | None = None
    path: str | None = None
    split: str | None = None
    group: tuple[str, str] | None = None  # (index column, value): every image of e.g. one study is affected

    @property
    def effect(self) -> str:
        return KINDS[self.kind][0]

    def where(self) -> str:
        """File, row and column for the console, e.g. ``train-rle.csv: line 7: column 'EncodedPixels'``."""
        row = ": ".join(p for p in (self.table, f"line {self.line}" if self.line else None) if p)
        parts = [f"{self.path} ({row})" if self.path and row else self.path or row]
        if self.column:
            parts.append(f"column {self.column!r}")
        if self.image is not None and self.path is None:
            parts.append(f"image {self.image}")
        elif self.group is not None and self.path is None:
            parts.append(f"{self.group[0]} {self.group[1]}")
        return ": ".join(p for p in parts if p)

    def console(self) -> str:
        return f"{self.where()}: {self.detail}"

    def record(self, salt: str) -> dict[str, Any]:
        """The meta.json form (no raw id, no image path)."""
        return {
            "kind": self.kind,
            "effect": self.effect,
            "table": self.table,
            "line": self.line,
            "column": self.column,
            "image": None if self.image is None else hash_id(self.image, salt),
            "group": None if self.group is None else [self.group[0], hash_id(self.group[1], salt)],
            "split": self.split,
            "detail": self.detail,
        }


@dataclass
class Problems:
    """The faults of one preparation, in the order found; ``raw_dir`` makes table names relative."""

    raw_dir: Path | None = None
    items: list[Problem] = field(default_factory=list)

    def add(self, kind: str, detail: str, *, table: Path | str | None = None, **where: Any) -> Problem:
        if kind not in KINDS:
            raise KeyError(f"unknown problem kind {kind!r}")
        item = Problem(kind, detail, table=self._rel(table), **where)
        self.items.append(item)
        return item

    def _rel(self, table: Path | str | None) -> str | None:
        if table is None:
            return None
        path = Path(table)
        if self.raw_dir is not None:
            try:
                return path.resolve().relative_to(Path(self.raw_dir).resolve()).as_posix()
            except ValueError:
                pass
        return path.name

    def images(self, effects: tuple[str, ...] = ("image",)) -> set[str]:
        """Raw ids of the images with a problem of one of ``effects``."""
        return {p.image for p in self.items if p.effect in effects and p.image is not None}

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.items))

    def losing(self) -> list[Problem]:
        """The problems that lose data (errors in strict mode)."""
        return [p for p in self.items if p.effect in LOSSES]


def format_table(items: list[Problem], examples: int = 3, width: int = 150) -> str:
    """The per-kind summary: kind, effect, count, then the first ``examples`` occurrences with file and row."""
    by_kind: dict[str, list[Problem]] = {}
    for p in items:
        by_kind.setdefault(p.kind, []).append(p)
    lines = [f"{'kind':<32} {'effect':<9} {'count':>7}  first examples"]
    for kind, group in by_kind.items():
        lines.append(f"{kind:<32} {group[0].effect:<9} {len(group):>7}  {KINDS[kind][1]}")
        for p in group[:examples]:
            text = p.console()
            lines.append("    " + (text if len(text) <= width else text[: width - 3] + "..."))
    return "\n".join(lines)


class BadInputError(DataFormatError):
    """Bad input found while preparing (the CLI exits 2): the message holds the table of every problem."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems
