"""Per-image patient sex and age, read from a dataset's label table into the prepared store, and nowhere else.

Readers call :func:`parse_sex` / :func:`parse_age` on their table's column and put the results in the raw index as
``sex_female`` (float: 1 female, 0 male, NaN unknown) and ``age_years`` (float years, NaN unknown). The store keeps
both columns in ``manifest.parquet`` (``cxrbench.data.store.METADATA``) and counts known / unknown values per split
in ``meta.json``; the ``metadata`` task reads them and reports only metrics (AUROC, MAE, R^2 and counts).

Unknown is not a problem: CheXpert writes ``Unknown`` for a few patients' sex and ``0`` for a few ages, and a
missing column or a blank cell means the same; those values are NaN and the image is dropped from that target only.
A value that cannot be a sex or an age (NIH ChestX-ray14 has a few ages above 140, entry errors such as 412) is a
``bad_metadata`` problem (effect ``fixed``: counted and shown with its file, line and column, never an error; the
value becomes unknown and the image stays in every other task).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

#: manifest columns of the per-image metadata, in this order (also ``cxrbench.data.store.METADATA``)
COLUMNS = ("sex_female", "age_years")
#: raw values (case-insensitive, stripped) of each sex; anything else is a ``bad_metadata`` problem
SEX_VALUES: Mapping[str, float] = {"female": 1.0, "f": 1.0, "male": 0.0, "m": 0.0}
UNKNOWN = frozenset({"", "unknown", "u", "nan", "none", "na", "n/a"})
#: ages above this many years are entry errors (NIH's >140 values); the oldest documented human was 122
MAX_AGE = 122.0
#: an age as an integer or decimal number of years, optionally with a DICOM-style unit suffix (058Y, 006M, 010D)
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([YMWD]?)$", re.IGNORECASE)
_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _strings(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())


def _report(bad, positions: np.ndarray, ids: pd.Series, column: str, detail: str) -> None:
    for pos in positions:
        bad.bad(int(pos), "bad_metadata", detail, str(ids.iloc[int(pos)]), column)


def parse_sex(values: pd.Series, bad, ids: pd.Series, column: str, check: np.ndarray | None = None) -> np.ndarray:
    """float (n,): 1.0 female, 0.0 male, NaN unknown (``UNKNOWN`` tokens) or invalid.

    values: the raw column (n,), positionally aligned with ``ids`` and with the table lines ``bad`` (a
    ``formats._util.BadRows``) numbers; an invalid value at a position where ``check`` (bool (n,), default all) is
    True is reported as ``bad_metadata`` (the detail never repeats the value: it may be a patient's data)."""
    text = _strings(values).str.lower()
    known = text.map(SEX_VALUES)
    invalid = known.isna() & ~text.isin(UNKNOWN)
    mask = invalid.to_numpy() & (np.ones(len(text), bool) if check is None else np.asarray(check, bool))
    _report(bad, np.flatnonzero(mask), ids, column, "not a sex; expected Female/Male (F/M) or Unknown/blank; "
            "treated as unknown for the metadata task, the image stays")
    return known.to_numpy(dtype=np.float64)


def age_in_years(text: str) -> float | None:
    """Years of one raw age ("67", "67.5", "058Y", "006M"); NaN for unknown ("" or "0"); None when invalid."""
    if text.lower() in UNKNOWN:
        return float("nan")
    m = _AGE.match(text)
    if m is None:
        return None
    years = float(m.group(1)) * _UNIT_YEARS[m.group(2).upper()]
    if years == 0:
        return float("nan")
    return years if years <= MAX_AGE else None


def parse_age(values: pd.Series, bad, ids: pd.Series, column: str, check: np.ndarray | None = None) -> np.ndarray:
    """float (n,) years; NaN for unknown (blank, ``Unknown``, 0) and for invalid values (not a number, negative,
    above ``MAX_AGE``), the invalid ones at ``check`` positions reported as ``bad_metadata`` (as :func:`parse_sex`)."""
    parsed = [age_in_years(t) for t in _strings(values)]
    invalid = np.array([p is None for p in parsed], dtype=bool)
    mask = invalid & (np.ones(len(parsed), bool) if check is None else np.asarray(check, bool))
    _report(bad, np.flatnonzero(mask), ids, column, f"not an age in years within 0..{MAX_AGE:g}; treated as unknown "
            "for the metadata task, the image stays")
    return np.array([np.nan if p is None else p for p in parsed], dtype=np.float64)


def counts(frame: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """meta.json's ``metadata``: {column: {split: {"known", "unknown"}}} over the manifest rows (counts only)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for col in COLUMNS:
        if col not in frame.columns:
            continue
        known = frame[col].notna().to_numpy()
        out[col] = {str(s): {"known": int(known[(frame["split"] == s).to_numpy()].sum()),
                             "unknown": int((~known[(frame["split"] == s).to_numpy()]).sum())}
                    for s in ("train", "valid", "test")}
    return out
