"""The generic preparation step: raw download -> prepared store (see ``cxrbench.data.store`` for the layout).

``reader.read`` -> split (reference or patient protocol) -> decode + resize every image in parallel chunks ->
drop undecodable images (``skip_bad``) -> nested training fractions -> ``images.npy`` / ``masks.npy`` /
``fractions/frac_<pct>.txt`` / ``meta.json`` / ``manifest.parquet``.

Resumable and atomic: all work goes into ``out_dir/.partial/``. Each chunk of ``chunk_size`` rows is
decoded straight into ``.partial/images.npy`` (and ``masks.npy``), then gets a done marker
``.partial/chunks/<k>.json`` holding its geometry; a rerun with the same inputs (same ``plan.json``
fingerprint) skips marked chunks. The final files are moved into ``out_dir`` only at the end,
``manifest.parquet`` last, and an old manifest is deleted when a run starts: a store without
``manifest.parquet`` is incomplete, one with it is complete.

Patient ids are replaced by ``patient_hash`` = first 16 hex digits of ``sha256(salt + "\\0" + patient)``
(``patient_ids="hash"``) or dropped (``"drop"``); never written or logged raw, and neither is the salt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrbench.data.formats._base import SPLITS, DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.images import ImageDecodeError, fit_geometry, load_image, resize_mask, resize_pad
from cxrbench.data.masks import boxes_mask, render_shapes
from cxrbench.data.splits import draw_fractions, patient_split
from cxrbench.data.store import build_manifest, build_meta, compact_array, install_store, write_store_files
from cxrbench.registry import DATASETS

log = logging.getLogger(__name__)
PARTIAL = ".partial"
MASK_MODES = ("auto", "shapes", "none")


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of rows [start, stop) to decode into the partial memmaps (picklable for worker processes)."""

    k: int
    start: int
    stop: int
    paths: list[str]
    shapes: list[Any]
    boxes: list[Any]
    size: int
    padding: str
    masks: bool
    skip_bad: bool
    partial: str


def resolve_reader(name: str | DatasetFormat | type) -> DatasetFormat:
    """A reader instance from a registered name, a DatasetFormat subclass or an instance."""
    obj = DATASETS.get(name) if isinstance(name, str) else name
    obj = obj() if isinstance(obj, type) else obj
    if not isinstance(obj, DatasetFormat):
        raise TypeError(f"expected a dataset name or DatasetFormat, got {obj!r}")
    return obj


def _read_index(reader: DatasetFormat, raw_dir: Path, options: dict[str, Any]) -> ReadResult:
    result = reader.read(raw_dir, options)
    result = result if isinstance(result, ReadResult) else ReadResult(result)
    index = result.index.reset_index(drop=True)
    missing = [c for c in ("image_id", "path", *reader.label_names) if c not in index.columns]
    if missing:
        raise DataFormatError(f"reader {reader.name!r}: raw index lacks column(s) {missing}")
    dup = index["image_id"][index["image_id"].duplicated()]
    if len(dup):
        raise DataFormatError(f"reader {reader.name!r}: duplicated image_id {dup.iloc[0]!r} ({len(dup)} duplicates)")
    defaults = {"patient": None, "official_split": None, "boxes": (), "shapes": (), "text": None}
    for col, default in defaults.items():
        if col not in index.columns:
            index[col] = [default] * len(index)
    result.index = index
    return result


def _assign_splits(reader: DatasetFormat, index: pd.DataFrame, protocol: str, seed: int, options: dict) -> pd.Series:
    """Split ("train"/"valid"/"test") per row, or None for rows the protocol leaves out (CheXpert 5x200)."""
    if protocol == "reference":
        split = reader.reference_split(index, options)
    elif protocol == "patient":
        split = patient_split(index["patient"], seed=seed)
    else:
        raise ValueError(f"split_protocol must be 'reference' or 'patient', got {protocol!r}")
    split = pd.Series(split, index=index.index).astype(object).where(pd.notna(split), None)
    bad = sorted({str(s) for s in split.dropna().unique()} - set(SPLITS))
    if bad:
        raise DataFormatError(f"reader {reader.name!r}: split values {bad} are not in {SPLITS}")
    return split


def _fingerprint(index: pd.DataFrame, size: int, padding: str, masks: bool, chunk_size: int) -> str:
    plan = [size, padding, masks, chunk_size, index["image_id"].tolist(), index["path"].tolist()]
    if masks:
        plan += [index["shapes"].tolist(), index["boxes"].tolist()]
    as_list = lambda v: v.tolist() if hasattr(v, "tolist") else str(v)  # noqa: E731 (arrays inside shapes/boxes)
    return hashlib.sha256(json.dumps(plan, default=as_list).encode()).hexdigest()


def _open_partial(out: Path, fingerprint: str, n: int, size: int, masks: bool) -> Path:
    """``out/.partial`` matching ``fingerprint`` (resumed), or new memmaps (stale state wiped)."""
    partial = out / PARTIAL
    plan_path = partial / "plan.json"
    arrays = [partial / "images.npy"] + ([partial / "masks.npy"] if masks else [])
    if plan_path.exists():
        same = json.loads(plan_path.read_text()).get("fingerprint") == fingerprint
        if same and all(p.exists() for p in arrays):
            return partial
        log.info("prepare: discarding partial work in %s (inputs changed)", partial)
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "chunks").mkdir(parents=True)
    for path in arrays:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()
    _atomic_write(plan_path, json.dumps({"fingerprint": fingerprint, "n": n, "size": size}))
    return partial


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _decode_one(job: ChunkJob, i: int, images: np.ndarray, masks: np.ndarray | None) -> list:
    """Decode row ``job.start + i`` into the memmaps -> [orig_h, orig_w, scale, pad_x, pad_y, has_mask]."""
    img = load_image(job.paths[i])
    images[job.start + i], g = resize_pad(img, job.size, job.padding)
    has_mask = False
    if masks is not None:
        shapes = job.shapes[i]
        if shapes is not None and len(shapes):
            mask = render_shapes(shapes, g.orig_h, g.orig_w)
        else:
            mask = boxes_mask(job.boxes[i], g.orig_h, g.orig_w)
        has_mask = bool(mask.any())
        masks[job.start + i] = resize_mask(mask, g)
    return [g.orig_h, g.orig_w, g.scale, g.pad_x, g.pad_y, has_mask]


def decode_chunk(job: ChunkJob) -> int:
    """Decode one chunk into ``.partial`` and write its done marker; returns the number of rows done."""
    partial = Path(job.partial)
    images = np.load(partial / "images.npy", mmap_mode="r+")
    masks = np.load(partial / "masks.npy", mmap_mode="r+") if job.masks else None
    geometry, failed = [], []
    for i in range(job.stop - job.start):
        try:
            geometry.append(_decode_one(job, i, images, masks))
        except (ImageDecodeError, ValueError) as err:
            if not job.skip_bad:
                raise err if isinstance(err, ImageDecodeError) else ImageDecodeError(str(err)) from err
            failed.append({"i": i, "reason": str(err)})
            geometry.append([0, 0, 0.0, 0, 0, False])
    images.flush()
    if masks is not None:
        masks.flush()
    del images, masks
    marker = {"k": job.k, "start": job.start, "stop": job.stop, "geometry": geometry, "failed": failed}
    _atomic_write(partial / "chunks" / f"{job.k}.json", json.dumps(marker))
    return job.stop - job.start


def _cpu_count() -> int:
    """CPUs this process may use (the affinity mask where the OS has one, else ``os.cpu_count()``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _run_chunks(jobs: list[ChunkJob], workers: int, bar: tqdm) -> None:
    """Run ``jobs`` in-process (workers <= 1) or over a process pool; the first failure cancels the rest."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            bar.update(decode_chunk(job))
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        pending = {pool.submit(decode_chunk, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
                bar.update(fut.result())


def _collect(partial: Path, n_chunks: int) -> tuple[np.ndarray, list[dict]]:
    """Geometry (n, 6) float64 of all chunks and the failed rows [{"pos", "reason"}] from the markers."""
    rows, failed = [], []
    for k in range(n_chunks):
        marker = json.loads((partial / "chunks" / f"{k}.json").read_text())
        rows.extend(marker["geometry"])
        failed.extend({"pos": marker["start"] + f["i"], "reason": f["reason"]} for f in marker["failed"])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6), failed


def _decode_all(index: pd.DataFrame, raw_dir: Path, out: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Decode every row of ``index`` into ``out/.partial`` (resuming done chunks); geometry, failures."""
    n, cs = len(index), cfg["chunk_size"]
    partial = _open_partial(
        out, _fingerprint(index, cfg["size"], cfg["padding"], cfg["masks"], cs), n, cfg["size"], cfg["masks"]
    )
    bounds = [(k, s, min(s + cs, n)) for k, s in enumerate(range(0, n, cs))]
    todo = [b for b in bounds if not (partial / "chunks" / f"{b[0]}.json").exists()]
    common = {key: cfg[key] for key in ("size", "padding", "masks", "skip_bad")}
    paths = [str(raw_dir / p) for p in index["path"]]
    shapes, boxes = index["shapes"].tolist(), index["boxes"].tolist()
    jobs = [ChunkJob(k, s, e, paths[s:e], shapes[s:e], boxes[s:e], partial=str(partial), **common) for k, s, e in todo]
    done_rows = n - sum(e - s for _, s, e in todo)
    t0 = time.perf_counter()
    with tqdm(
        total=n, initial=done_rows, unit="img", desc=f"prepare {cfg['name']}", disable=not cfg["progress"]
    ) as bar:
        _run_chunks(jobs, cfg["workers"], bar)
    seconds = time.perf_counter() - t0
    geometry, failed = _collect(partial, len(bounds))
    if failed and not cfg["skip_bad"]:
        raise ImageDecodeError(f"{len(failed)} undecodable image(s), first: {failed[0]['reason']}")
    return {
        "partial": partial,
        "geometry": geometry,
        "failed": failed,
        "decoded": n - done_rows,
        "resumed_chunks": len(bounds) - len(todo),
        "chunks": len(bounds),
        "seconds": seconds,
    }


def hash_patient(patient: Any, salt: str) -> str | None:
    """First 16 hex digits of sha256(salt + NUL + patient); None for a missing id."""
    if patient is None or (not isinstance(patient, str) and pd.isna(patient)) or str(patient) == "":
        return None
    return hashlib.sha256(f"{salt}\0{patient}".encode()).hexdigest()[:16]


def _label_matrix(df: pd.DataFrame, label_names: tuple[str, ...]) -> np.ndarray:
    cols = [df[n].to_numpy(dtype=np.float32) for n in label_names]
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0), dtype=np.float32)


def _fractions(df: pd.DataFrame, reader: DatasetFormat, pcts: tuple[int, ...], seed: int, stratify: bool) -> dict:
    """Nested training fractions {pct: image ids} via ``splits.draw_fractions`` (labels as strata)."""
    train = df[df["split"] == "train"]
    strata = _label_matrix(train, reader.label_names) if reader.label_names else None
    fracs = draw_fractions(
        train["image_id"].tolist(), tuple(pcts), seed=seed, strata=strata, stratify=stratify, name=reader.name
    )
    return {int(p): list(ids) for p, ids in sorted(fracs.items())}


def _finish(index: pd.DataFrame, dec: dict, reader: DatasetFormat, result: ReadResult, cfg: dict) -> dict:
    """Manifest, fractions and meta from the decoded rows; install the store (manifest last). Returns meta."""
    keep = np.ones(len(index), dtype=bool)
    keep[[f["pos"] for f in dec["failed"]]] = False
    skipped = [
        {
            "image_id": str(index["image_id"].iloc[f["pos"]]),
            "path": str(index["path"].iloc[f["pos"]]),
            "reason": f["reason"],
        }
        for f in dec["failed"]
    ]
    hashes = [hash_patient(p, cfg["salt"]) for p in index["patient"]] if cfg["patient_ids"] == "hash" else None
    df = build_manifest(index, keep, dec["geometry"], reader, cfg, hashes)
    fracs = _fractions(df, reader, cfg["fractions"], cfg["protocol"]["fraction_seed"], cfg["protocol"]["stratified"])
    for pct, ids in fracs.items():
        df[f"frac_{pct}"] = df["image_id"].isin(set(ids))
    meta = build_meta(reader, df, result, cfg, {**cfg["protocol"], "fractions": sorted(fracs)}, skipped, fracs)
    partial = dec["partial"]
    files = write_store_files(partial, df, meta, fracs)
    files["images.npy"] = compact_array(partial / "images.npy", keep)
    if cfg["masks"]:
        files["masks.npy"] = compact_array(partial / "masks.npy", keep)
    install_store(partial, cfg["out"], files)
    return meta


def prepare_dataset(
    name: str | DatasetFormat,
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 64,
    split_protocol: str = "reference",
    split_seed: int = 0,
    fraction_seed: int = 0,
    fractions: tuple[int, ...] = (1, 10, 100),
    stratify: bool = True,
    workers: int | None = None,
    chunk_size: int = 256,
    skip_bad: bool = False,
    padding: str = "center",
    masks: str = "auto",
    patient_ids: str = "hash",
    salt: str = "cxrbench",
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Prepare dataset ``name`` (registered name, DatasetFormat subclass or instance) from ``raw_dir`` into ``out_dir``.

    size: store side S in pixels; padding: "center" | "topleft" (``cxrbench.data.images``);
    split_protocol: "reference" (``reader.reference_split``) | "patient" (``splits.patient_split``, ``split_seed``);
    fractions / fraction_seed / stratify: nested training fractions (``splits.draw_fractions``, labels as strata);
    workers: decoding processes (None = all usable CPUs; <= 1 decodes in this process); chunk_size: rows per chunk
    (the resume unit); skip_bad: drop undecodable images (listed in meta.json) instead of raising;
    masks: "auto" writes masks.npy when the reader ``has_masks`` ("shapes" forces it, "none" never) - a row's mask
    is its shapes, or its boxes filled when it has no shapes (RSNA); patient_ids: "hash" (with ``salt``) | "drop";
    progress: show a tqdm bar; options: reader options (``skip_bad`` is added).
    Returns a summary: n_images, skipped, split_sizes, decoded, resumed_chunks, chunks, seconds, images_per_s.
    """
    if masks not in MASK_MODES or patient_ids not in ("hash", "drop"):
        raise ValueError(f"masks must be in {MASK_MODES}, patient_ids 'hash' or 'drop'; got {masks!r}, {patient_ids!r}")
    fit_geometry(1, 1, int(size), padding)  # validates size and padding before any work
    reader, raw_dir, out = resolve_reader(name), Path(raw_dir), Path(out_dir)
    options = {"skip_bad": skip_bad, **(options or {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.parquet").unlink(missing_ok=True)  # from here on the store is incomplete
    result = _read_index(reader, raw_dir, options)
    split = _assign_splits(reader, result.index, split_protocol, split_seed, options)
    index = result.index[split.notna()].reset_index(drop=True).assign(split=split.dropna().to_numpy())
    if not len(index):
        raise DataFormatError(f"dataset {reader.name!r}: no images in {raw_dir} after the {split_protocol} split")
    protocol = {
        "split": split_protocol,
        "split_seed": split_seed,
        "fraction_seed": fraction_seed,
        "stratified": stratify,
        "n_excluded": int(split.isna().sum()),
    }
    cfg = {
        "name": reader.name,
        "out": out,
        "size": int(size),
        "padding": padding,
        "skip_bad": skip_bad,
        "chunk_size": max(1, int(chunk_size)),
        "masks": masks == "shapes" or (masks == "auto" and reader.has_masks),
        "workers": _cpu_count() if workers is None else int(workers),
        "progress": progress,
        "patient_ids": patient_ids,
        "salt": salt,
        "fractions": tuple(fractions),
        "protocol": protocol,
    }
    dec = _decode_all(index, raw_dir, out, cfg)
    meta = _finish(index, dec, reader, result, cfg)
    log.info("prepare %s: %d images (%d skipped) -> %s", reader.name, meta["n_images"], len(dec["failed"]), out)
    speed = dec["decoded"] / dec["seconds"] if dec["seconds"] > 0 else float("nan")
    return {
        "dataset": reader.name,
        "out_dir": str(out),
        "n_images": meta["n_images"],
        "skipped": len(dec["failed"]),
        "split_sizes": meta["split_sizes"],
        "decoded": dec["decoded"],
        "resumed_chunks": dec["resumed_chunks"],
        "chunks": dec["chunks"],
        "seconds": dec["seconds"],
        "images_per_s": speed,
    }
