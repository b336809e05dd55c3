"""The generic preparation step: raw download -> prepared store (see ``cxrbench.data.store`` for the layout).

``reader.read`` (label tables only) -> split over every row the tables list (reference or patient protocol) and
nested training fractions -> file checks -> decode + resize in parallel resumable chunks (``cxrbench.data.decode``)
-> every problem collected (``cxrbench.data.problems``) -> strict: fail with the whole list; ``skip_bad``: drop the
affected images from THEIR split (counted per split, ceiling ``max_skipped_fraction``) -> store.

Splits and fractions never depend on which files are present or decodable: they are computed before any image is
opened, over the label tables as published, and an unusable image is removed from its split afterwards.

Atomic and resumable: all work goes into ``<out>.partial/`` beside the output directory (so a Snakemake rerun,
which deletes the output first, still resumes the finished chunks); the new store is assembled in
``<out>.partial/store/`` and swapped into ``out`` only when complete. A failed or killed run leaves a previous store
exactly as it was.

Privacy: image ids are stored as ``hash_id`` (salted sha256 prefix; so are reader id columns such as ``study_id``),
patients as ``patient_hash`` (``patient_ids="hash"``) or not at all (``"drop"``); ``meta.json`` lists problems by
label table, line and hashed id, never by image path. Only the console names raw files.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from cxrbench.data.decode import decode_rows
from cxrbench.data.formats._base import SPLITS, DataFormatError, DatasetFormat, ReadResult
from cxrbench.data.images import fit_geometry
from cxrbench.data.problems import LOSSES, BadInputError, Problems, format_table
from cxrbench.data.splits import draw_fractions, patient_split
from cxrbench.data.store import assemble_store, build_manifest, build_meta, recover_swap, swap_in
from cxrbench.registry import DATASETS

MASK_MODES = ("auto", "shapes", "none")


def resolve_reader(name: str | DatasetFormat | type) -> DatasetFormat:
    """A reader instance from a registered name, a DatasetFormat subclass or an instance."""
    obj = DATASETS.get(name) if isinstance(name, str) else name
    obj = obj() if isinstance(obj, type) else obj
    if not isinstance(obj, DatasetFormat):
        raise TypeError(f"expected a dataset name or DatasetFormat, got {obj!r}")
    return obj


def partial_dir(out: Path) -> Path:
    """Where the partial work of ``out`` lives: the sibling ``<out>.partial`` (kept when Snakemake deletes ``out``)."""
    return out.with_name(out.name + ".partial")


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
    defaults = {"patient": None, "official_split": None, "boxes": (), "shapes": (), "text": None,
                "protocol_drop": None, "line": None}
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


def _affected(index: pd.DataFrame, problems: Problems) -> np.ndarray:
    """Boolean (n,): rows with a problem that makes the image unusable (by image id or by group column)."""
    bad = index["image_id"].isin(problems.images()).to_numpy().copy()
    groups: dict[str, set] = {}
    for p in problems.items:
        if p.effect == "image" and p.group is not None and p.group[0] in index.columns:
            groups.setdefault(p.group[0], set()).add(p.group[1])
    for col, values in groups.items():
        bad |= index[col].isin(values).to_numpy()
    return bad


def _check_rows(index: pd.DataFrame, raw_dir: Path, problems: Problems, reader: DatasetFormat) -> np.ndarray:
    """Rows in no split (not a protocol drop) and missing image files become problems; returns "file present"."""
    flagged = _affected(index, problems)
    present = np.zeros(len(index), dtype=bool)
    for pos, row in enumerate(index[["path", "split", "protocol_drop"]].itertuples(index=False)):
        if pd.isna(row.split) and pd.isna(row.protocol_drop) and not flagged[pos]:
            problems.add("no_split", f"in no split; expected it in {reader.split_source or 'the split tables'}",
                         **_row_where(index, pos, reader))
        if pd.isna(row.split):
            continue
        present[pos] = isinstance(row.path, str) and (raw_dir / row.path).is_file()
        if not present[pos] and isinstance(row.path, str) and not flagged[pos]:
            problems.add("missing_file", "image file not found", path=row.path, **_row_where(index, pos, reader))
    return present


def _check_boxes(index: pd.DataFrame, geometry: np.ndarray, decoded: np.ndarray, problems: Problems,
                 reader: DatasetFormat) -> list:
    """Boxes clipped to their image (``box_clipped``) or dropped when no area is inside (``box_outside_image``)."""
    out = []
    for pos, boxes in enumerate(index["boxes"]):
        if not decoded[pos] or boxes is None or not len(boxes):
            out.append(boxes)
            continue
        h, w = geometry[pos, 0], geometry[pos, 1]
        kept = []
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist():
            clipped = np.clip(box, 0, [w, h, w, h]).tolist()
            where = _row_where(index, pos, reader)
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                problems.add("box_outside_image", f"box {box} has no area inside the {w:.0f}x{h:.0f} image", **where)
                continue
            if clipped != box:
                problems.add("box_clipped", f"box {box} clipped to {clipped} ({w:.0f}x{h:.0f} image)", **where)
            kept.append(clipped)
        out.append(kept)
    return out


def _line(index: pd.DataFrame, pos: int) -> int | None:
    value = index["line"].iloc[pos]
    return None if value is None or pd.isna(value) else int(value)


def _row_where(index: pd.DataFrame, pos: int, reader: DatasetFormat) -> dict[str, Any]:
    """Label table and line of index row ``pos`` (the reader's ``table`` column, else its ``main_table``)."""
    table = index["table"].iloc[pos] if "table" in index.columns else None
    return {"table": table if isinstance(table, str) else reader.main_table or None, "line": _line(index, pos),
            "image": index["image_id"].iloc[pos]}


def _decide(index: pd.DataFrame, lost: np.ndarray, problems: Problems, cfg: dict, stream: IO[str]) -> dict:
    """Strict: any data-losing problem is an error. skip_bad: warn, then fail above the per-split ceiling."""
    split_of = dict(zip(index["image_id"], index["split"], strict=True))
    for p in problems.items:
        p.split = split_of.get(p.image) if isinstance(split_of.get(p.image), str) else None
    losing = problems.losing()
    per_split = {s: int((lost & (index["split"] == s).to_numpy()).sum()) for s in SPLITS}
    per_split["none"] = int((index["split"].isna() & index["protocol_drop"].isna()).sum())
    if problems.items:
        print(f"prepare {cfg['name']}: problems found\n{format_table(problems.items)}", file=stream, flush=True)
    if losing and not cfg["skip_bad"]:
        first = losing[0].console()
        more = f" (and {len(losing) - 1} more problem(s), listed above)" if len(losing) > 1 else ""
        raise BadInputError(
            f"dataset {cfg['name']!r}: {first}{more}. Fix the download, or set data.skip_bad: true to skip bad "
            f"images (they are counted; the run still fails above data.max_skipped_fraction).", losing)
    for split, n_lost in per_split.items():
        total = int((index["split"] == split).sum()) if split != "none" else len(index)
        if total and n_lost / total > cfg["max_skipped_fraction"]:
            raise BadInputError(
                f"dataset {cfg['name']!r}: {n_lost} of {total} {split} images lost ({100 * n_lost / total:.2f}%) "
                f"> data.max_skipped_fraction = {cfg['max_skipped_fraction']} (problems listed above)", losing)
    return per_split


def _protocol_counts(index: pd.DataFrame, counts: dict[str, int]) -> dict[str, int]:
    out = {k: int(v) for k, v in counts.items() if k.startswith("protocol_") and v}
    for kind, n in index["protocol_drop"].dropna().value_counts().items():
        out[str(kind)] = out.get(str(kind), 0) + int(n)
    return out


def hash_patient(patient: Any, salt: str) -> str | None:
    """First 16 hex digits of sha256(salt + NUL + patient); None for a missing id."""
    if patient is None or (not isinstance(patient, str) and pd.isna(patient)) or str(patient) == "":
        return None
    return hashlib.sha256(f"{salt}\0{patient}".encode()).hexdigest()[:16]


def _label_matrix(df: pd.DataFrame, label_names: tuple[str, ...]) -> np.ndarray:
    cols = [df[n].to_numpy(dtype=np.float32) for n in label_names]
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0), dtype=np.float32)


def _fractions(index: pd.DataFrame, reader: DatasetFormat, cfg: dict) -> dict[int, set[str]]:
    """Nested training fractions {pct: raw image ids}, drawn over the WHOLE training split (labels as strata)."""
    train = index[index["split"] == "train"]
    strata = np.nan_to_num(_label_matrix(train, reader.label_names)) if reader.label_names else None
    pcts = tuple(cfg["fractions"])
    fracs = draw_fractions(train["image_id"].tolist(), pcts, seed=cfg["protocol"]["fraction_seed"], strata=strata,
                           stratify=cfg["protocol"]["stratified"], min_positives=cfg["protocol"]["min_positives"],
                           name=reader.name)
    return {int(p): set(ids) for p, ids in sorted(fracs.items())}


def _decode(index: pd.DataFrame, present: np.ndarray, raw_dir: Path, cfg: dict, problems: Problems, stream,
            reader: DatasetFormat) -> dict:
    """Decode the rows whose file is present; failures become problems. Geometry is returned for every row."""
    pos = np.flatnonzero(present)
    rows = {"paths": [str(raw_dir / index["path"].iloc[p]) for p in pos],
            "shapes": [index["shapes"].iloc[p] for p in pos], "boxes": [index["boxes"].iloc[p] for p in pos]}
    dec = decode_rows(rows, cfg["partial"], cfg, stream)
    geometry = np.zeros((len(index), 6))
    geometry[pos] = dec["geometry"]
    decoded = present.copy()
    for f in dec["failed"]:
        p = int(pos[f["pos"]])
        decoded[p] = False
        problems.add(f["kind"], f["reason"], path=index["path"].iloc[p], **_row_where(index, p, reader))
    return {**dec, "geometry_all": geometry, "decoded_all": decoded, "decode_pos": pos}


def _run(reader: DatasetFormat, raw_dir: Path, cfg: dict, options: dict, stream: IO[str]) -> dict:
    result = _read_index(reader, raw_dir, options)
    problems = Problems(raw_dir, list(result.problems))
    index = result.index
    split = _assign_splits(reader, index, cfg["protocol"]["split"], cfg["protocol"]["split_seed"], options)
    index = index.assign(split=split.to_numpy())
    cfg["protocol"]["n_excluded"] = int((index["split"].isna() & index["protocol_drop"].notna()).sum())
    fracs = _fractions(index, reader, cfg)
    present = _check_rows(index, raw_dir, problems, reader)
    dec = _decode(index, present, raw_dir, cfg, problems, stream, reader)
    boxes = _check_boxes(index, dec["geometry_all"], dec["decoded_all"], problems, reader)
    index = index.assign(boxes=boxes)
    lost = _affected(index, problems) & index["split"].notna().to_numpy()
    lost |= index["split"].notna().to_numpy() & ~dec["decoded_all"]
    lost_per_split = _decide(index, lost, problems, cfg, stream)
    keep = index["split"].notna().to_numpy() & ~lost
    keep_dec = keep[dec["decode_pos"]]
    df = build_manifest(index, keep, dec["geometry_all"], reader, cfg)
    for pct, ids in fracs.items():
        df[f"frac_{pct}"] = index["image_id"][keep].isin(ids).to_numpy()
    frac_ids = {p: df.loc[df[f"frac_{p}"], "image_id"].tolist() for p in fracs}
    extra = {"problems": [p.record(cfg["salt"]) for p in problems.items], "problem_counts": problems.counts(),
             "lost_per_split": lost_per_split, "protocol_drops": _protocol_counts(index, result.counts)}
    meta = build_meta(reader, df, result, cfg, {**cfg["protocol"], "fractions": sorted(fracs)}, frac_ids, extra)
    store = assemble_store(cfg["partial"], df, meta, frac_ids, keep_dec, cfg["masks"])
    swap_in(store, cfg["out"])
    return {"meta": meta, "dec": dec, "lost": int(sum(lost_per_split.values()))}


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
    min_positives: int = 1,
    workers: int | None = None,
    chunk_size: int = 256,
    skip_bad: bool = False,
    max_skipped_fraction: float = 0.001,
    padding: str = "center",
    masks: str = "auto",
    patient_ids: str = "hash",
    salt: str = "cxrbench",
    progress: bool = True,
    options: dict[str, Any] | None = None,
    stream: IO[str] | None = None,
) -> dict[str, Any]:
    """Prepare dataset ``name`` (registered name, DatasetFormat subclass or instance) from ``raw_dir`` into ``out_dir``.

    size: store side S in pixels; padding: "center" | "topleft" (``cxrbench.data.images``);
    split_protocol: "reference" (``reader.reference_split``) | "patient" (``splits.patient_split``, ``split_seed``);
    fractions / fraction_seed / stratify / min_positives: nested training fractions (``splits.draw_fractions``,
    labels as strata; a stratified fraction holds at least ``min_positives`` positives of every label);
    workers: decoding processes (None = all usable CPUs; <= 1 decodes in this process); chunk_size: rows per chunk
    (the resume unit); skip_bad: drop images with problems (``cxrbench.data.problems``) instead of failing, but fail
    when a split loses more than ``max_skipped_fraction`` of its images; masks: "auto" writes masks.npy when the
    reader ``has_masks`` ("shapes" forces it, "none" never) - a row's mask is its shapes, or its boxes filled when it
    has no shapes (RSNA); patient_ids: "hash" (with ``salt``) | "drop"; progress: per-image progress on ``stream``
    (default stderr: a bar on a terminal, else a line every 10 %); options: reader options.
    Raises ``BadInputError`` (a ``DataFormatError``) for bad input, after printing the table of every problem.
    Returns a summary: n_images, skipped, lost_per_split, problems (counts by kind), protocol_drops, split_sizes,
    decoded, resumed_chunks, chunks, seconds, images_per_s.
    """
    if masks not in MASK_MODES or patient_ids not in ("hash", "drop"):
        raise ValueError(f"masks must be in {MASK_MODES}, patient_ids 'hash' or 'drop'; got {masks!r}, {patient_ids!r}")
    fit_geometry(1, 1, int(size), padding)  # validates size and padding before any work
    reader, raw_dir, out = resolve_reader(name), Path(raw_dir), Path(out_dir)
    stream = sys.stderr if stream is None else stream
    recover_swap(out)
    protocol = {"split": split_protocol, "split_seed": split_seed, "fraction_seed": fraction_seed,
                "stratified": stratify, "min_positives": int(min_positives)}
    cfg = {
        "name": reader.name, "out": out, "partial": partial_dir(out), "size": int(size), "padding": padding,
        "skip_bad": skip_bad, "max_skipped_fraction": float(max_skipped_fraction),
        "chunk_size": max(1, int(chunk_size)), "masks": masks == "shapes" or (masks == "auto" and reader.has_masks),
        "workers": _cpu_count() if workers is None else int(workers), "progress": progress,
        "patient_ids": patient_ids, "salt": salt, "fractions": tuple(fractions), "protocol": protocol,
    }
    run = _run(reader, raw_dir, cfg, dict(options or {}), stream)
    meta, dec = run["meta"], run["dec"]
    speed = dec["decoded"] / dec["seconds"] if dec["seconds"] > 0 else float("nan")
    return {
        "dataset": reader.name,
        "out_dir": str(out),
        "n_images": meta["n_images"],
        "skipped": run["lost"],
        "lost_per_split": meta["lost_per_split"],
        "problems": meta["problem_counts"],
        "protocol_drops": meta["protocol_drops"],
        "split_sizes": meta["split_sizes"],
        "decoded": dec["decoded"],
        "resumed_chunks": dec["resumed_chunks"],
        "chunks": dec["chunks"],
        "seconds": dec["seconds"],
        "images_per_s": speed,
    }


def _cpu_count() -> int:
    """CPUs this process may use (the affinity mask where the OS has one, else ``os.cpu_count()``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


__all__ = ["LOSSES", "BadInputError", "hash_patient", "partial_dir", "prepare_dataset", "resolve_reader"]
