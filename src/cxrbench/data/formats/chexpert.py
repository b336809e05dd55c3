"""CheXpert v1.0 (-small): ``CheXpert-v1.0-small/{train,valid}.csv`` (19 columns, ``Path`` includes the top
folder).

Frontal images only. Labels of the 5 competition tasks, mapped per the reference (MGCA) protocol:
U-Ones (-1 -> 1) for Atelectasis, Edema, Pleural Effusion; U-Zeros (-1 -> 0) for Cardiomegaly, Consolidation;
blank -> 0. The other 9 label columns are validated but not kept. ``Sex`` (Male / Female / Unknown) and ``Age``
(years; 0 = unknown) become the store's ``sex_female`` / ``age_years`` (``cxrbench.data.demographics``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data.demographics import parse_age, parse_sex
from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.formats._util import BadRows, check_unique, make_index, parse_labels, read_csv
from cxrbench.data.problems import Problems
from cxrbench.registry import DATASETS

ALL_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + ALL_LABELS
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
U_ONES = ("Atelectasis", "Edema", "Pleural Effusion")
FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"patient(\d+)")


def map_uncertain(labels: pd.DataFrame) -> pd.DataFrame:
    """Reference mapping of raw values {1, 0, -1, NaN} of the competition columns: U-Ones / U-Zeros, blank "
    "-> 0."""
    out = labels[list(COMPETITION)].fillna(0.0).copy()
    for col in COMPETITION:
        out[col] = out[col].where(out[col] != -1, 1.0 if col in U_ONES else 0.0)
    return out


@DATASETS.register("chexpert")
class CheXpert(DatasetFormat):
    name = "chexpert"
    title = "CheXpert v1.0"
    label_names = COMPETITION
    label_kind = "multilabel"
    paper_split_sizes = (186027, 5000, 202)
    download_hint = (
        "Download CheXpert-v1.0-small (Stanford AIMI) and unpack it so that CheXpert-v1.0-small/train.csv, "
        "valid.csv, train/ and valid/ sit in the raw directory (params key data.datasets.chexpert.raw)."
    )

    def read(self, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
        folder = options.get("folder") or next((f for f in FOLDERS if (Path(raw_dir) / f).is_dir()), FOLDERS[0])
        files = self.require(raw_dir, f"{folder}/train.csv", f"{folder}/valid.csv")
        problems = Problems(Path(raw_dir))
        parts, counts = [], {"protocol_non_frontal": 0}
        for path, split in zip(files, ("train", "valid"), strict=True):
            frame, lateral = self._read(path, split, problems)
            parts.append(frame)
            counts[f"{split}_rows"], counts[f"{split}_lateral_dropped"] = len(frame) + lateral, lateral
            counts["protocol_non_frontal"] += lateral
        frame = pd.concat(parts, ignore_index=True)
        frame["in_5x200"] = five_x200(frame, int(options.get("n_5x200", 200)))
        frame["protocol_drop"] = np.where(frame["in_5x200"], "protocol_chexpert_5x200", None)
        index = make_index({c: frame[c] for c in frame.columns}, self.label_names, len(frame))
        counts.update(
            images=len(index),
            in_5x200=int(index["in_5x200"].sum()),
            patients=int(index["patient"].nunique()),
        )
        return ReadResult(index, problems.items, counts)

    @staticmethod
    def _read(path: Path, split: str, problems: Problems) -> tuple[pd.DataFrame, int]:
        """Frontal rows of one csv (a row with an invalid view is kept as frontal, flagged); lateral count."""
        df = read_csv(path, COLUMNS)
        bad = BadRows(path, problems)
        ids = pd.Series([i.strip() or f"?line{k + 2}" for k, i in enumerate(df["Path"])], index=df.index)
        for pos in np.flatnonzero(ids.str.startswith("?line").to_numpy()):
            bad.bad(int(pos), "no_image_id", "empty Path", ids.iloc[pos], "Path")
        first = check_unique(ids, bad, "Path")
        raw = parse_labels(df, ALL_LABELS, bad, (1.0, 0.0, -1.0), ids)
        view = df["Frontal/Lateral"].str.strip()
        for pos in np.flatnonzero(~view.isin(["Frontal", "Lateral"]).to_numpy()):
            detail = f"value {view.iloc[pos]!r}; expected Frontal or Lateral"
            bad.bad(int(pos), "bad_value", detail, ids.iloc[pos], "Frontal/Lateral")
        frontal = first & (view != "Lateral").to_numpy()
        labels = map_uncertain(raw[frontal])
        out = pd.DataFrame(
            {
                "image_id": ids[frontal],
                "path": ids[frontal],
                "patient": ids[frontal].map(lambda p: m.group(0) if (m := _PATIENT.search(p)) else None),
                "official_split": split,
                "view": df["AP/PA"][frontal],
                "order": np.flatnonzero(frontal),
                "line": np.flatnonzero(frontal) + 2,
                "table": f"{path.parent.name}/{path.name}",
                "sex_female": parse_sex(df["Sex"], bad, ids, "Sex", frontal)[frontal],
                "age_years": parse_age(df["Age"], bad, ids, "Age", frontal)[frontal],
            }
        )
        out = pd.concat([out, labels], axis=1).reset_index(drop=True)
        return out, int((first & (view == "Lateral").to_numpy()).sum())

    def reference_split(self, index: pd.DataFrame, options: dict[str, Any]) -> pd.Series:
        """5x200 rows -> None (excluded); official valid.csv frontal -> test; of the remaining train rows,
        ``valid_size`` (default min(5000, 10 % of them)) rows drawn by ``np.random.default_rng(split_seed)``
        -> valid
        (really held out), the rest -> train."""
        split = pd.Series(
            np.where(index["official_split"] == "valid", "test", None),
            index=index.index,
            dtype=object,
            name="split",
        )
        pool = index.index[(index["official_split"] == "train") & ~index["in_5x200"].astype(bool)]
        size = options.get("valid_size")
        size = min(5000, len(pool) // 10) if size is None else int(size)
        if size > len(pool):
            raise ValueError(f"chexpert: valid_size {size} > {len(pool)} train rows left after the 5x200 removal")
        rng = np.random.default_rng(int(options.get("split_seed", 0)))
        valid = rng.choice(len(pool), size=size, replace=False)
        split[pool] = "train"
        split[pool[valid]] = "valid"
        return split


def five_x200(index: pd.DataFrame, per_class: int = 200) -> np.ndarray:
    """The CheXpert 5x200 set, deterministically: for each competition label (in the order of
    ``COMPETITION``),
    the FIRST ``per_class`` frontal train.csv rows in file order whose mapped competition labels have
    exactly that one
    positive. Returns a boolean mask aligned with ``index`` (the sets are disjoint by construction)."""
    labels = index[list(COMPETITION)].to_numpy(dtype=float) == 1
    train = (index["official_split"] == "train").to_numpy()
    chosen = np.zeros(len(index), dtype=bool)
    for k in range(len(COMPETITION)):
        only = train & labels[:, k] & (labels.sum(1) == 1)
        chosen[np.flatnonzero(only)[:per_class]] = True
    return chosen
