"""Fingerprints: what produced a resumable state, a cache entry or an exported checkpoint.

A fingerprint is a JSON-able mapping of the inputs of a result: the resolved parameters that affect it, the code
version of this package (:func:`code_version`), a content hash of the prepared data it read (:func:`store_hash`)
and, downstream, a hash of the encoder's weights (:func:`module_hash`). State whose recorded fingerprint differs
from the current one is never resumed or read: :func:`claim_state_dir` removes it (and logs which inputs changed),
so nothing stale can be mistaken for the new result.

Code version = ``<package version>+src.<sha256 of the package's source files>``, computed once per process. A hash
of the files that actually run, rather than ``git describe``: it sees uncommitted edits, works in an installed copy
without ``.git``, and costs a few milliseconds. Any source change therefore invalidates resumable state and caches
(as it does DVC's stages, which depend on ``src/``): conservative by design.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"  # inside a resumable state directory
STORE_HASH_FILE = ".store_hash.json"  # inside a prepared store: the content hash, keyed by its files' size + mtime
STORE_ARRAYS = ("images.npy", "masks.npy")
CHUNK = 1 << 24


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, non-JSON values as ``str``): what fingerprints are compared as."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def normalise(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, Paths -> str), so a stored fingerprint compares equal."""
    return json.loads(canonical(obj))


def digest(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of sha256(canonical(obj))."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------------ code


@functools.cache
def code_version() -> str:
    """``<version>+src.<16 hex>``: sha256 over the relative path and bytes of every ``.py`` / ``.yaml`` / ``.json``
    file of the installed ``cxrbench`` package (sorted by path, ``__pycache__`` skipped). Computed once per process."""
    import cxrbench

    root = Path(cxrbench.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(p for ext in ("*.py", "*.yaml", "*.json") for p in root.rglob(ext) if "__pycache__" not in p.parts)
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return f"{_package_version()}+src.{h.hexdigest()[:16]}"


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cxrbench")
    except metadata.PackageNotFoundError:
        return "0"


# ------------------------------------------------------------------------------------------------ data


def _stamp(root: Path) -> dict[str, list[int]]:
    """[size, mtime_ns] of the files the content hash reads: the cache key of ``STORE_HASH_FILE``."""
    out = {}
    for name in (*STORE_ARRAYS, "manifest.parquet", "meta.json"):
        path = root / name
        if path.is_file():
            st = path.stat()
            out[name] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def store_hash(store_dir: str | Path) -> str:
    """sha256 (hex) of a prepared store's content: the bytes of ``images.npy`` and ``masks.npy`` (header included,
    so shape and dtype count) and the manifest columns training reads (:func:`manifest_content`), never its
    metadata (``meta.json``'s counts, skipped lists, paths). Cached in ``<store>/.store_hash.json`` keyed by the
    size and mtime of those files, so it is computed once per preparation (``prepare`` calls it at its end)."""
    root = Path(store_dir)
    if not (root / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{root}: no manifest.parquet - not a prepared store, cannot hash its content")
    stamp, cache = _stamp(root), root / STORE_HASH_FILE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    value = _hash_store(root)
    try:
        _atomic_text(cache, canonical({"files": stamp, "sha256": value}) + "\n")
    except OSError as err:  # a read-only store: the hash is still right, only not cached
        log.info("%s: content hash not cached (%s)", root, err)
    return value


def _hash_store(root: Path) -> str:
    h = hashlib.sha256()
    for name in STORE_ARRAYS:
        path = root / name
        if path.is_file():
            h.update(f"{name}\0".encode())
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
    label_names = json.loads((root / "meta.json").read_text()).get("label_names", [])
    import pandas as pd

    h.update(manifest_content(pd.read_parquet(root / "manifest.parquet"), label_names))
    return h.hexdigest()


def manifest_content(df: Any, label_names: list[str]) -> bytes:
    """Canonical bytes of the manifest columns a task or method reads: row, split, the label columns (in
    ``label_names`` order; NaN kept distinct from every number), the fraction memberships, boxes, text, and the
    metadata task's targets (sex, age)."""
    cols = ["row", "split", *label_names, *sorted(c for c in df.columns if c.startswith("frac_")), "boxes", "text",
            "sex_female", "age_years"]
    parts = []
    for col in cols:
        if col not in df.columns:
            continue
        values = df[col].to_numpy()
        if values.dtype.kind in "biuf":
            x = values.astype(np.float64)
            body = np.isnan(x).tobytes() + np.nan_to_num(x, nan=0.0).tobytes()
        else:
            body = canonical([_plain(v) for v in values]).encode()
        parts.append(f"{col}\0{values.dtype.kind}\0".encode() + body)
    return b"\1".join(parts)


def _plain(value: Any) -> Any:
    """A manifest cell as plain JSON values (parquet lists arrive as numpy arrays of arrays)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def data_hash(store: Any) -> str:
    """Content hash of an opened store: :func:`store_hash` of its directory when it has one (``root``), else a
    sha256 of its in-memory arrays (images, masks, labels and split rows: test stand-ins)."""
    root = getattr(store, "root", None)
    if root is not None and (Path(root) / "manifest.parquet").is_file():
        return store_hash(root)
    h = hashlib.sha256()
    for arr in (store.images, getattr(store, "masks", None)):
        if arr is not None:
            a = np.ascontiguousarray(np.asarray(arr))
            h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    every = np.arange(len(store.images))
    h.update(np.ascontiguousarray(np.asarray(store.labels(every), dtype=np.float64)).tobytes())
    for split in ("train", "valid", "test"):
        h.update(split.encode() + np.asarray(store.rows(split), dtype=np.int64).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ weights


def module_hash(module: Any) -> str:
    """sha256 (16 hex) of a module's class, ``config`` and every state-dict tensor (name, shape, dtype, bytes)."""
    import torch

    h = hashlib.sha256(type(module).__qualname__.encode())
    h.update(canonical(getattr(module, "config", {})).encode())
    for name, t in sorted(module.state_dict().items()):
        if not torch.is_tensor(t):
            continue
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ state


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints (what the log says changed)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "<all>"]


def read_fingerprint(state_dir: str | Path) -> Any:
    """The fingerprint recorded in a state directory (None when absent or unreadable)."""
    try:
        return json.loads((Path(state_dir) / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None


def claim_state_dir(state_dir: str | Path, fingerprint: Mapping[str, Any], *, what: str = "state") -> bool:
    """Make ``state_dir`` the resumable state of ``fingerprint``.

    True when it already records this fingerprint (resume from it). Otherwise everything in it is stale - written
    for other inputs, or by a version that recorded no fingerprint: it is removed (a warning names the inputs that
    changed), the directory is recreated empty with ``fingerprint.json``, and False is returned (start fresh).
    Only one process may claim a directory (under torchrun: rank 0; the engine's own check keeps the others
    consistent)."""
    path, want = Path(state_dir), normalise(dict(fingerprint))
    have = read_fingerprint(path)
    if have == want:
        return True
    if path.is_dir() and any(path.iterdir()):
        why = "it records no fingerprint" if have is None else f"changed: {', '.join(changed_keys(have, want))}"
        log.warning("%s: stale %s removed, starting fresh (%s)", path, what, why)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    _atomic_text(path / FINGERPRINT_FILE, json.dumps(want, sort_keys=True, indent=2) + "\n")
    return False


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
