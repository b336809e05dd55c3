"""The prepared store: what ``cxrbench.data.prepare`` writes and training reads (fast, memory-mapped).

Layout of a store directory (e.g. ``data/prepared/<name>/``)::

    manifest.parquet    one row per image: row (index into images.npy), image_id, split (train/valid/test),
                        patient_hash (salted sha256 prefix; absent with patient_ids="drop"), one float32
                        column per label (1 / 0 / NaN), boxes (list of xyxy in store pixels), has_mask (the
                        mask has a positive pixel), text (if any), frac_<pct> (bool, training fraction
                        membership), orig_h, orig_w, scale, pad_x, pad_y (store = original * scale + pad),
                        official_split, sex_female / age_years (float32, NaN unknown; datasets whose tables
                        have them, ``cxrbench.data.demographics``: read only by ``metadata``), reader extras.
    images.npy          uint8 (N, S, S), see ``cxrbench.data.images`` for the resize/padding geometry.
    masks.npy           uint8 (N, S, S) with values {0, 1} (datasets with masks, or RSNA boxes filled).
    fractions/frac_<pct>.txt   image ids of the training fraction, one per line.
    meta.json           dataset, size, padding, label_names, label_kind, split sizes beside the papers' sizes,
                        counts, protocol drops, images lost per split, every problem (kind, label table, line,
                        column, hashed image id, what was wrong; ``cxrbench.data.problems``), known / unknown
                        sex and age counts per split (``metadata``).

``image_id`` (and the fraction files) hold ``problems.hash_id(raw id, salt)``: raw ids such as NIH file names or
CheXpert paths carry patient ids. A store is assembled beside its final place and swapped in complete
(``swap_in``), so a directory at the store's path is always a complete store.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.data import demographics
from cxrbench.data.formats._base import SPLITS, DatasetFormat, ReadResult
from cxrbench.data.images import fit_geometry, map_boxes
from cxrbench.data.problems import hash_id

FIELDS = ("image", "label", "mask", "boxes", "text")
METADATA = demographics.COLUMNS  # per-image patient metadata: sex_female (1 / 0 / NaN), age_years (NaN unknown)


class PreparedDataset:
    """A prepared store opened lazily: ``meta`` on construction, manifest and memmaps on first use.

    Picklable cheaply (DataLoader workers reopen the memmaps instead of copying the arrays).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "manifest.parquet").is_file():
            raise FileNotFoundError(
                f"{self.root}: no manifest.parquet - not a prepared store, or its preparation did not finish "
                "(run `cxrbench prepare` for this dataset)"
            )
        self.meta: dict[str, Any] = json.loads((self.root / "meta.json").read_text())
        self.name: str = self.meta["dataset"]
        self.size: int = int(self.meta["size"])
        self.label_names: tuple[str, ...] = tuple(self.meta["label_names"])
        self.label_kind: str = self.meta["label_kind"]

    def __getstate__(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.__dict__.items() if k not in ("images", "masks", "manifest", "_label_array")
        }

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, name={self.name!r}, size={self.size})"

    @cached_property
    def manifest(self) -> pd.DataFrame:
        df = pd.read_parquet(self.root / "manifest.parquet")
        if not np.array_equal(df["row"].to_numpy(), np.arange(len(df))):
            raise ValueError(f"{self.root}/manifest.parquet: column 'row' must be 0..N-1 in order")
        return df

    @cached_property
    def images(self) -> np.ndarray:
        arr = np.load(self.root / "images.npy", mmap_mode="r")
        if arr.shape[1:] != (self.size, self.size) or arr.dtype != np.uint8:
            raise ValueError(
                f"{self.root}/images.npy: expected uint8 (N, {self.size}, {self.size}), "
                f"got {arr.dtype} {arr.shape}"
            )
        return arr

    @cached_property
    def masks(self) -> np.ndarray | None:
        path = self.root / "masks.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    @cached_property
    def _label_array(self) -> np.ndarray:
        cols = [self.manifest[n].to_numpy(dtype=np.float32) for n in self.label_names]
        return np.stack(cols, axis=1) if cols else np.zeros((len(self.manifest), 0), dtype=np.float32)

    def __len__(self) -> int:
        return int(self.meta["n_images"])

    @property
    def fractions(self) -> list[int]:
        return sorted(int(c.split("_", 1)[1]) for c in self.manifest.columns if c.startswith("frac_"))

    def rows(self, split: str, fraction: int = 100) -> np.ndarray:
        """int64 rows of ``split``; for "train" only the ``fraction`` % subset (valid/test: always whole)."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"{self.root}: split must be train, valid or test, got {split!r}")
        m = self.manifest
        sel = (m["split"] == split).to_numpy(dtype=bool).copy()
        if split == "train" and fraction != 100:
            col = f"frac_{fraction}"
            if col not in m.columns:
                raise KeyError(f"{self.root}: no training fraction {fraction}% (available: {self.fractions})")
            sel &= m[col].to_numpy(dtype=bool)
        return m["row"].to_numpy(dtype=np.int64)[sel]

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """float32 (n, K) labels of ``rows`` (NaN = unknown)."""
        return self._label_array[np.asarray(rows, dtype=np.int64)]

    def boxes(self, rows: np.ndarray) -> list[np.ndarray]:
        """Per row a float32 (m, 4) xyxy array in store pixels (m may be 0)."""
        col = self.manifest["boxes"]
        return [_as_boxes(col.iat[int(r)]) for r in np.asarray(rows, dtype=np.int64)]

    def metadata(self, name: str, rows: np.ndarray) -> np.ndarray:
        """float64 (n,) of the metadata column ``name`` (``METADATA``) at ``rows``; NaN = unknown. A store whose
        dataset has no such column (or prepared before it existed) raises, saying what to do."""
        if name not in METADATA:
            raise KeyError(f"{self.root}: no metadata {name!r}; the store keeps {list(METADATA)}")
        if name not in self.manifest.columns:
            raise KeyError(f"{self.root}/manifest.parquet: no column {name!r} - dataset {self.name!r} has no such "
                           "metadata, or the store predates it (prepare it again)")
        return self.manifest[name].to_numpy(dtype=np.float64)[np.asarray(rows, dtype=np.int64)]

    def texts(self, rows: np.ndarray) -> list[str]:
        """Per row its text ("" where the dataset or the row has none)."""
        if "text" not in self.manifest.columns:
            return [""] * len(rows)
        col = self.manifest["text"]
        return [str(t) if isinstance(t, str) else "" for t in (col.iat[int(r)] for r in np.asarray(rows))]


def _as_boxes(value: Any) -> np.ndarray:
    if value is None or len(value) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    return np.stack([np.asarray(b, dtype=np.float32) for b in value]).reshape(-1, 4)


# ---- writing side (used by cxrbench.data.prepare) ----------------------------------------------------------


_DROP_EXTRAS = ("patient", "path", "name", "birth", "subject", "shapes")
_INTERNAL = ("line", "table", "protocol_drop", "order", "split")
STORE_FILES = ("manifest.parquet", "meta.json", "images.npy", "masks.npy", "fractions")


def _extras(kept: pd.DataFrame, reader: DatasetFormat, salt: str) -> dict[str, pd.Series]:
    """Reader extra columns safe to keep: scalar, no patient/path/name/birth/subject in the name; id columns
    (``*_id``, e.g. MIMIC's study_id) hashed like the image ids."""
    known = {"image_id", "path", "patient", "official_split", "boxes", "shapes", "text", *_INTERNAL,
             *reader.label_names, *METADATA}
    out = {}
    for col in kept.columns:
        if col in known or any(w in str(col).lower() for w in _DROP_EXTRAS):
            continue
        values = kept[col]
        if str(col).lower().endswith("_id"):
            values = values.map(lambda v: None if v is None or v != v else hash_id(v, salt))
        if values.map(lambda v: v is None or isinstance(v, (str, int, float, bool, np.generic))).all():
            out[str(col)] = values
    return out


def build_manifest(
    index: pd.DataFrame, keep: np.ndarray, geometry: np.ndarray, reader: DatasetFormat, cfg: dict[str, Any]
) -> pd.DataFrame:
    """One row per kept image, ``row`` = its position in images.npy (columns: ``cxrbench.data.store``).

    ``geometry`` (n, 6): orig_h, orig_w, scale, pad_x, pad_y, has_mask per row of ``index``."""
    from cxrbench.data.prepare import hash_patient

    kept, geo = index[keep].reset_index(drop=True), geometry[keep]
    df = pd.DataFrame(
        {
            "row": np.arange(len(kept), dtype=np.int64),
            "image_id": [hash_id(i, cfg["salt"]) for i in kept["image_id"]],
            "split": kept["split"].astype(str),
        }
    )
    if cfg["patient_ids"] == "hash":
        df["patient_hash"] = [hash_patient(p, cfg["salt"]) for p in kept["patient"]]
    for name in reader.label_names:
        df[name] = kept[name].to_numpy(dtype=np.float32)
    geoms = [fit_geometry(int(h), int(w), cfg["size"], cfg["padding"]) for h, w in geo[:, :2]]
    df["boxes"] = [
        map_boxes(np.asarray(b if b is not None else [], dtype=np.float64), g).astype(np.float64).tolist()
        for b, g in zip(kept["boxes"], geoms, strict=True)
    ]
    df["has_mask"] = geo[:, 5].astype(bool)
    if kept["text"].notna().any():
        df["text"] = kept["text"].astype(object).where(kept["text"].notna(), None)
    df["orig_h"], df["orig_w"] = geo[:, 0].astype(np.int64), geo[:, 1].astype(np.int64)
    df["scale"], df["pad_x"], df["pad_y"] = geo[:, 2], geo[:, 3].astype(np.int64), geo[:, 4].astype(np.int64)
    df["official_split"] = kept["official_split"].astype(object).where(kept["official_split"].notna(), None)
    for col in (c for c in METADATA if c in kept.columns):
        df[col] = pd.to_numeric(kept[col], errors="coerce").to_numpy(dtype=np.float32)
    return df.assign(**_extras(kept, reader, cfg["salt"]))


def build_meta(
    reader: DatasetFormat, df: pd.DataFrame, result: ReadResult, cfg: dict, protocol: dict, fracs: dict, extra: dict
) -> dict[str, Any]:
    """meta.json: sizes beside the papers', counts, and every problem (``extra``: problems by kind, lost per
    split, protocol drops; problems name label tables, lines and hashed ids only)."""
    sizes = {s: int((df["split"] == s).sum()) for s in SPLITS}
    paper = reader.paper_split_sizes
    positives = {
        s: {n: int((df.loc[df["split"] == s, n] == 1).sum()) for n in reader.label_names} for s in SPLITS
    }
    return {
        "format_version": 2,
        "dataset": reader.name,
        "title": reader.title,
        "size": cfg["size"],
        "padding": cfg["padding"],
        "label_names": list(reader.label_names),
        "label_kind": reader.label_kind,
        "has_boxes": bool(reader.has_boxes),
        "has_masks": bool(cfg["masks"]),
        "has_text": "text" in df.columns,
        "n_images": len(df),
        "split_sizes": sizes,
        "paper_split_sizes": dict(zip(SPLITS, paper, strict=True)) if paper else None,
        "fraction_sizes": {str(p): len(ids) for p, ids in fracs.items()},
        "positives": positives,
        "metadata": demographics.counts(df),
        "protocol": protocol,
        "patient_ids": cfg["patient_ids"],
        "image_ids": "hash",
        "skip_bad": bool(cfg["skip_bad"]),
        "max_skipped_fraction": cfg["max_skipped_fraction"],
        "counts": {
            **{k: int(v) for k, v in result.counts.items()},
            "read": len(result.index),
            "excluded_by_split": protocol["n_excluded"],
            "skipped_images": int(sum(extra["lost_per_split"].values())),
        },
        **extra,
    }


def write_store_files(store: Path, manifest: pd.DataFrame, meta: dict, fractions: dict[int, list[str]]) -> None:
    """Write fractions/, meta.json and manifest.parquet into ``store``."""
    frac_dir = store / "fractions"
    frac_dir.mkdir(parents=True, exist_ok=True)
    for pct, ids in fractions.items():
        (frac_dir / f"frac_{pct}.txt").write_text("".join(f"{i}\n" for i in ids))
    (store / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    manifest.to_parquet(store / "manifest.parquet", index=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"meta.json: cannot serialise {type(value).__name__}")


def compact_array(src: Path, keep: np.ndarray, dst: Path, block: int = 1024) -> None:
    """``src`` (N, S, S) restricted to the rows where ``keep``, written to ``dst`` (moved when all rows stay)."""
    if keep.all():
        os.replace(src, dst)
        return
    full = np.load(src, mmap_mode="r")
    pos = np.flatnonzero(keep)
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=full.dtype, shape=(len(pos), *full.shape[1:]))
    for a in range(0, len(pos), block):
        out[a : a + block] = full[pos[a : a + block]]
    out.flush()


def assemble_store(partial: Path, df: pd.DataFrame, meta: dict, fractions: dict, keep: np.ndarray, masks: bool) -> Path:
    """The complete new store in ``partial/store`` (arrays from the partial memmaps restricted to ``keep``);
    its content hash is computed here once (``cxrbench.fingerprint.store_hash``, when that module exists)."""
    store = partial / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    compact_array(partial / "images.npy", keep, store / "images.npy")
    if masks:
        compact_array(partial / "masks.npy", keep, store / "masks.npy")
    write_store_files(store, df, meta, fractions)
    try:
        from cxrbench.fingerprint import store_hash
    except ImportError:
        return store
    store_hash(store)
    return store


def _old(out: Path) -> Path:
    return out.with_name(out.name + ".old")


def recover_swap(out: Path) -> None:
    """Undo a swap killed between its two renames (the previous store is back at ``out``)."""
    old = _old(out)
    if old.exists() and not out.exists():
        os.replace(old, out)
    elif old.exists():
        shutil.rmtree(old)


def swap_in(store: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``store`` (two renames; ``recover_swap`` undoes a kill in between), then
    remove the partial work. Refuses to replace a directory that is not a prepared store."""
    if out.exists() and any(out.iterdir()) and not any((out / n).exists() for n in STORE_FILES):
        raise FileExistsError(f"{out}: exists and is not a prepared store; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        os.replace(out, _old(out))
    os.replace(store, out)
    shutil.rmtree(_old(out), ignore_errors=True)
    shutil.rmtree(store.parent, ignore_errors=True)
