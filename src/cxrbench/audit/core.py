"""The contamination audit's work: which downstream test images (and patients) a pretraining corpus holds.

For every pair (pretraining corpus, downstream test split) of the matrix:

- **by ids** where the two share an id space (:data:`ID_SPACES`: MIMIC-CXR's dicom ids are MS-CXR's, a dataset's
  ids are its own): shared images = test images whose id is in the corpus, shared patients = test patients
  (``patient_hash``) with an image in the corpus. Ids are compared as the prepared stores hold them,
  ``problems.hash_id(raw id, salt)`` and ``prepare.hash_patient``; raw ids are hashed here with the same salt
  (``prepare_dataset``'s) and never written.
- **by perceptual hash** where the ids differ (the real RSNA and SIIM images are NIH ChestX-ray14 images re-encoded as
  DICOM under new ids): ``imagehash.phash(image, hash_size)`` (imagehash/__init__.py ``phash``: the grey image
  resized to 4 hash_size x 4 hash_size pixels, its 2-D DCT, the hash_size x hash_size lowest frequencies against
  their median) of the prepared pixels; a test image is shared when some corpus image lies within
  ``hamming_threshold`` bits. Shared patients are then the test patients with a matched image. Hashes are cached
  per store content (``fingerprint.store_hash``) under ``<paths.features>/phash/``, so each store is hashed once.

Corpora: the pretraining store (``pretrain.dataset``; the rows pretraining reads, as
``cxrbench.pretrain.pretraining_rows``: train split with a non-empty report) and every ``audit.image_lists`` entry,
a CSV of the images a released model was trained on (e.g. RAD-DINO's ``training_images.csv`` on the Hugging Face
``microsoft/rad-dino`` model page; its column names are not verified here: ``id_column`` / ``dataset_column`` set
them). A list's entries are hashed in every id form they may take (:func:`_candidates`) and matched to the test
ids; those found in the prepared store of their dataset (any split) also give the list its patients and pixels, so
RAD-DINO's NIH images are found again in the RSNA and SIIM test sets by hash.

Threshold, measured on the demo's synthetic data (params.yaml sizes, 64 px stores, hash_size 16 = 256 bits, 5
planted duplicates per target; every pair of the 2,494 images of MIMIC, RSNA, SIIM, NIH and CheXpert): planted
re-encoded duplicates lie 0-6 bits from their source; distinct images of different datasets >= 16 bits apart (1st
percentile 36-62 bits, median 82); distinct images of one dataset >= 12 (follow-up images of one synthetic patient
share its anatomy). The default 10 separates them on both sides; ``tests/test_audit.py`` checks it on its own set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.audit import id_space

FORMAT = 1
#: set bits of every byte value (numpy < 2 has no bitwise_count)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


#: the salt ``prepare`` hashes ids with: ``prepare_dataset``'s default, which the CLI never overrides (a test keeps
#: the two equal; importing ``prepare`` here would cost torch's and scikit-learn's start-up)
SALT = "cxrbench"


def salt() -> str:
    """The id salt (:data:`SALT`)."""
    return SALT


@dataclass
class Corpus:
    """A pretraining corpus: hashed image ids and patient hashes per id space, and its pixels as (store, rows)."""

    name: str
    ids: dict[str, set[str]] = field(default_factory=dict)
    patients: dict[str, set[str]] = field(default_factory=dict)
    pixels: list[tuple[str, np.ndarray]] = field(default_factory=list)
    images: int = 0
    unmatched: dict[str, int] = field(default_factory=dict)

    def add(self, dataset: str, store: str, manifest: pd.DataFrame, rows: np.ndarray) -> None:
        space, col = id_space(dataset)
        part = manifest.iloc[rows]
        self.ids.setdefault(space, set()).update(part[col].dropna().astype(str))
        if "patient_hash" in part:
            self.patients.setdefault(space, set()).update(part["patient_hash"].dropna().astype(str))
        self.pixels.append((store, np.asarray(rows, dtype=np.int64)))
        self.images += len(rows)


def read_manifest(store: str | Path) -> pd.DataFrame:
    path = Path(store) / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared store at {store} (run `cxrbench prepare` for it first)")
    return pd.read_parquet(path)


def store_corpus(name: str, dataset: str, store: str) -> Corpus:
    """The rows pretraining reads from ``store``: train split, non-empty report text."""
    m = read_manifest(store)
    keep = (m["split"] == "train").to_numpy(dtype=bool).copy()
    if "text" in m:
        keep &= m["text"].map(lambda t: isinstance(t, str) and bool(t.strip())).to_numpy()
    corpus = Corpus(name)
    corpus.add(dataset, store, m, np.flatnonzero(keep))
    return corpus


def _candidates(value: str) -> list[str]:
    """Raw-id forms a list entry may match: itself, each trailing part of its path, its file name's stem."""
    parts = PurePosixPath(str(value).strip().replace("\\", "/")).parts
    forms = ["/".join(parts[i:]) for i in range(len(parts))]
    return [*forms, PurePosixPath(parts[-1]).stem] if parts else []


def read_image_list(name: str, spec: str | Mapping[str, Any]) -> pd.DataFrame:
    """An image list as (dataset, image) rows. ``spec``: a CSV path, or {path, dataset_column (default
    "dataset"), id_column (default "image_id"), dataset (one dataset for every row), aliases {value: dataset}}."""
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    path = Path(spec["path"])
    if not path.is_file():
        raise FileNotFoundError(f"audit.image_lists.{name}: {path} does not exist (download the list, e.g. RAD-DINO's "
                                "training_images.csv from huggingface.co/microsoft/rad-dino, or remove the entry)")
    df = pd.read_csv(path, dtype=str)
    id_col, ds_col = spec.get("id_column", "image_id"), spec.get("dataset_column", "dataset")
    missing = [c for c in (id_col, None if "dataset" in spec else ds_col) if c and c not in df.columns]
    if missing:
        raise KeyError(f"audit.image_lists.{name}: {path} has no column(s) {missing} (columns: {list(df.columns)}); "
                       "set id_column / dataset_column / dataset")
    aliases = {str(k).lower(): v for k, v in (spec.get("aliases") or {}).items()}
    ds = pd.Series(spec["dataset"], index=df.index) if "dataset" in spec else df[ds_col].fillna("")
    ds = ds.map(lambda v: aliases.get(str(v).lower(), str(v).lower()))
    return pd.DataFrame({"dataset": ds, "image": df[id_col].fillna("")})


def list_corpus(name: str, spec: Any, stores: Mapping[str, str], salt_: str) -> Corpus:
    """An image list: every entry's hashed id forms (so a test image counts even when its own store lacks it, e.g.
    MS-CXR images, which the MIMIC store excludes); the entries found in the prepared store of their dataset (any
    split) also give the list patients and pixels. ``unmatched``: entries per dataset not found in a store."""
    from cxrbench.data.problems import hash_id

    entries = read_image_list(name, spec)
    corpus = Corpus(name)
    for dataset, group in entries.groupby("dataset", sort=True):
        forms = [{hash_id(c, salt_) for c in _candidates(v)} for v in group["image"]]
        corpus.ids.setdefault(id_space(str(dataset))[0], set()).update(*forms)
        found = np.zeros(len(forms), dtype=bool)
        if dataset in stores:
            m = read_manifest(stores[dataset])
            col = id_space(str(dataset))[1]
            have = set(m[col].dropna().astype(str))
            found = np.array([bool(f & have) for f in forms], dtype=bool)
            rows = np.flatnonzero(m[col].astype(str).isin(set().union(*forms)).to_numpy())
            corpus.add(str(dataset), stores[dataset], m, rows)
        if not found.all():
            corpus.unmatched[str(dataset)] = int((~found).sum())
    return corpus


def phashes(store: str | Path, cache_dir: str | Path, hash_size: int = 8) -> np.ndarray:
    """uint8 (N, hash_size**2 / 8) packed phash bits of every image of ``store`` (row order), cached in
    ``cache_dir/<store content hash>-phash<hash_size>.npy``."""
    from cxrbench.fingerprint import store_hash

    path = Path(cache_dir) / f"{store_hash(store)}-phash{hash_size}.npy"
    if path.is_file():
        return np.load(path)
    import imagehash
    from PIL import Image

    images = np.load(Path(store) / "images.npy", mmap_mode="r")
    bits = [imagehash.phash(Image.fromarray(np.asarray(im)), hash_size=hash_size).hash.ravel() for im in images]
    out = np.packbits(np.asarray(bits, dtype=bool).reshape(len(images), -1), axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def min_distance(query: np.ndarray, ref: np.ndarray, chunk: int = 64) -> np.ndarray:
    """int (M,) smallest Hamming distance from each packed hash of ``query`` (M, B) to ``ref`` (N, B); N = 0 ->
    a distance larger than any hash."""
    if len(ref) == 0:
        return np.full(len(query), 8 * query.shape[1] + 1, dtype=np.int64)
    out = np.empty(len(query), dtype=np.int64)
    for a in range(0, len(query), chunk):
        xor = np.bitwise_xor(query[a : a + chunk, None, :], ref[None, :, :])
        out[a : a + chunk] = _POPCOUNT[xor].sum(-1, dtype=np.int64).min(1)
    return out


def _by_ids(corpus: Corpus, dataset: str, test: pd.DataFrame) -> tuple[np.ndarray, int, int]:
    space, col = id_space(dataset)
    hit = test[col].astype(str).isin(corpus.ids.get(space, set())).to_numpy()
    if "patient_hash" not in test:
        return hit, int(test.loc[hit, col].nunique()), 0
    patients = test["patient_hash"].astype(str).isin(corpus.patients.get(space, set())).to_numpy() | hit
    return hit, int(test.loc[hit, col].nunique()), int(test.loc[patients, "patient_hash"].dropna().nunique())


def _by_hash(corpus: Corpus, store: str, test: pd.DataFrame, cfg: Mapping[str, Any]) -> tuple[np.ndarray, int, int]:
    size, cache = int(cfg["hash_size"]), cfg["cache"]
    ref = [phashes(s, cache, size)[rows] for s, rows in corpus.pixels]
    ref_all = np.concatenate(ref) if ref else np.zeros((0, size * size // 8), dtype=np.uint8)
    query = phashes(store, cache, size)[test["row"].to_numpy(dtype=np.int64)]
    hit = min_distance(query, ref_all) <= int(cfg["hamming_threshold"])
    patients = int(test.loc[hit, "patient_hash"].nunique()) if "patient_hash" in test else 0
    return hit, int(hit.sum()), patients


def audit_pair(corpus: Corpus, dataset: str, store: str, cfg: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """One table row (corpus, test, by, test_images, shared_images, shared_patients) and the contaminated
    manifest rows of ``dataset``'s test split."""
    m = read_manifest(store)
    test = m[m["split"] == "test"]
    space = id_space(dataset)[0]
    by = "ids" if space in corpus.ids else "hash"
    hit, images, patients = (_by_ids(corpus, dataset, test) if by == "ids" else _by_hash(corpus, store, test, cfg))
    row = {"corpus": corpus.name, "test": f"{dataset}/test", "by": by, "corpus_images": corpus.images,
           "test_images": len(test), "shared_images": images, "shared_patients": patients}
    return row, test["row"].to_numpy(dtype=np.int64)[hit]


def run_audit(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The audit of ``cfg`` (:func:`audit_params`): {"pairs": [table rows], "contaminated": {dataset: {"rows":
    sorted manifest rows (union over corpora), "store_hash"}}, "hash_size", "hamming_threshold",
    "unmatched": {list: {dataset: entries}}}."""
    from cxrbench.fingerprint import store_hash

    stores, s = dict(cfg["stores"]), salt()
    corpora = [store_corpus(cfg["pretrain_dataset"], cfg["pretrain_dataset"], stores[cfg["pretrain_dataset"]])]
    corpora += [list_corpus(n, spec, stores, s) for n, spec in sorted((cfg.get("image_lists") or {}).items())]
    pairs, bad = [], {d: set() for d in cfg["tests"]}
    for corpus in corpora:
        for dataset in cfg["tests"]:
            row, rows = audit_pair(corpus, dataset, stores[dataset], cfg)
            pairs.append(row)
            bad[dataset].update(int(r) for r in rows)
    return {"format": FORMAT, "pairs": pairs, "hamming_threshold": int(cfg["hamming_threshold"]),
            "hash_size": int(cfg["hash_size"]),
            "contaminated": {d: {"rows": sorted(r), "store_hash": store_hash(stores[d])} for d, r in bad.items()},
            "unmatched": {c.name: c.unmatched for c in corpora if c.unmatched}}


def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """``result`` as JSON at ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
