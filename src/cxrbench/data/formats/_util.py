"""Helpers shared by the dataset readers: checked CSV reading, label parsing, duplicate checks, index
assembly.

Conventions: "line N" in messages is the 1-based line of the file (the header is line 1). A bad row never raises:
it is recorded in the reader's ``Problems`` (``cxrbench.data.problems``) and the reader keeps the image in its index
(so the split is computed over the label table as published); ``prepare`` removes it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.formats._base import RAW_COLUMNS, DataFormatError, DatasetFormat
from cxrbench.data.problems import Problems


def find_file(fmt: DatasetFormat, raw_dir: Path, name: str) -> Path:
    """``raw_dir/name`` or ``raw_dir/name.gz``, whichever exists; else FileNotFoundError with the download "
    "hint."""
    for cand in (Path(raw_dir) / name, Path(raw_dir) / f"{name}.gz"):
        if cand.exists():
            return cand
    return fmt.require(raw_dir, name)[0]


def read_text(path: Path) -> str:
    """A label/list file as UTF-8 text; a binary or otherwise undecodable file is a ``DataFormatError`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {err.start}); expected the dataset's text file") from err


def read_csv(path: Path, required: Sequence[str], *, strip_names: bool = False, **kw: Any) -> pd.DataFrame:
    """A CSV (plain or .gz) as strings (blank = ""), checking that every ``required`` column exists."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        raise DataFormatError(f"{path}: cannot be parsed as CSV ({err})") from err
    if strip_names:
        df.columns = [str(c).strip() for c in df.columns]
    check_columns(df, required, path)
    return df


def check_columns(df: pd.DataFrame, required: Iterable[str], path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")


class BadRows:
    """Records bad rows of one file in ``problems`` (never raises); ``rows`` holds their 0-based positions.

    ``group``: the index column that ``ident`` refers to when a row describes several images (MIMIC's per-study
    label table: ``"study_id"``); by default ``ident`` is the image id."""

    def __init__(self, path: Path, problems: Problems, first_line: int = 2, group: str | None = None) -> None:
        self.path, self.problems, self.first_line, self.group = path, problems, first_line, group
        self.rows: set[int] = set()

    def bad(self, pos: int, kind: str, detail: str, ident: str | None = None, column: str | None = None) -> None:
        """Row at 0-based data position ``pos`` is bad (``kind`` from ``problems.KINDS``); ``ident``: its image."""
        self.rows.add(pos)
        where = {"image": ident} if self.group is None or ident is None else {"group": (self.group, ident)}
        self.problems.add(kind, detail, table=self.path, line=pos + self.first_line, column=column, **where)

    def drop(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` (positional rows 0..n-1) without the bad rows (for rows that are not images, e.g. boxes)."""
        keep = np.ones(len(df), dtype=bool)
        keep[list(self.rows)] = False
        return df[keep]


def parse_labels(
    df: pd.DataFrame, columns: Sequence[str], bad: BadRows, allowed: Sequence[float], ids: pd.Series
) -> pd.DataFrame:
    """Float labels of ``columns`` (blank -> NaN); a value outside ``allowed`` is a ``bad_label`` (-> NaN)."""
    out = {}
    for col in columns:
        raw = df[col].astype(str).str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        wrong = (raw != "") & ~num.isin(list(allowed))
        for pos in np.flatnonzero(wrong.to_numpy()):
            detail = f"value {raw.iloc[pos]!r}; expected one of {sorted(allowed)} or blank"
            bad.bad(int(pos), "bad_label", detail, str(ids.iloc[pos]), column=col)
        out[col] = num.where(~wrong).astype(float).to_numpy()
    return pd.DataFrame(out, index=df.index)


def check_unique(ids: pd.Series, bad: BadRows, what: str = "image id") -> np.ndarray:
    """Every row after the first with the same id is a ``duplicate_id``; returns the boolean mask of first rows."""
    dup = ids.duplicated(keep="first").to_numpy()
    first = {}
    for pos, value in enumerate(ids):
        first.setdefault(value, pos)
    for pos in np.flatnonzero(dup):
        line = first[ids.iloc[pos]] + bad.first_line
        bad.bad(int(pos), "duplicate_id", f"{what} already on line {line} (that row is kept)", str(ids.iloc[pos]))
    return ~dup


def empty_lists(n: int) -> list[list]:
    return [[] for _ in range(n)]


def make_index(columns: dict[str, Any], label_names: Sequence[str], n: int) -> pd.DataFrame:
    """A raw index with every RAW_COLUMN (defaults: None / empty lists) and every label column (NaN "
    "default)."""
    data = dict(columns)
    for col in RAW_COLUMNS:
        if col not in data:
            data[col] = empty_lists(n) if col in ("boxes", "shapes") else [None] * n
    for name in label_names:
        data.setdefault(name, np.full(n, np.nan))
    order = list(RAW_COLUMNS) + list(label_names)
    df = pd.DataFrame({k: (list(v) if not isinstance(v, np.ndarray) else v) for k, v in data.items()})
    extras = [c for c in df.columns if c not in order]
    return df[order + extras].reset_index(drop=True)


def official_test_then_holdout(index: pd.DataFrame, *, random_state: int, **size: float | int) -> pd.Series:
    """The official test rows stay test; the official train rows, in file order (``order``), are split by one
    ``sklearn.model_selection.train_test_split(rows, **size, random_state=...)`` call into (train, valid).
    ``size`` is ``train_size=...`` or ``test_size=...`` exactly as the reference code passes it."""
    from sklearn.model_selection import train_test_split

    split = pd.Series(np.where(index["official_split"] == "test", "test", None), index=index.index, dtype=object,
                      name="split")
    train = index[index["official_split"] == "train"].sort_values("order").index.to_list()
    if train:
        tr, va = train_test_split(train, random_state=random_state, **size)
        split[tr], split[va] = "train", "valid"
    return split
