"""cxrbench.fingerprint: the store content hash (what counts, what does not, its cache), the state-dir claim."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest

from cxrbench import fingerprint as F


def store(root, *, pixels=7, label=1.0, note="a"):
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", np.full((3, 4, 4), pixels, np.uint8))
    pd.DataFrame({"row": [0, 1, 2], "split": ["train", "valid", "test"], "A": [label, 0.0, np.nan],
                  "frac_100": True, "image_id": [f"{note}{i}" for i in range(3)]}).to_parquet(root / "manifest.parquet")
    (root / "meta.json").write_text(json.dumps({"dataset": "x", "size": 4, "label_names": ["A"], "note": note}))
    return root


def test_store_hash_reads_pixels_and_labels_not_metadata(tmp_path):
    base = F.store_hash(store(tmp_path / "a"))
    assert len(base) == 64 and base == F.store_hash(store(tmp_path / "b"))
    assert F.store_hash(store(tmp_path / "c", note="other")) == base  # meta.json and image ids are metadata
    assert F.store_hash(store(tmp_path / "d", pixels=8)) != base
    assert F.store_hash(store(tmp_path / "e", label=0.0)) != base
    assert F.store_hash(store(tmp_path / "f", label=np.nan)) != F.store_hash(store(tmp_path / "g", label=0.0))
    masked = store(tmp_path / "h")
    np.save(masked / "masks.npy", np.zeros((3, 4, 4), np.uint8))
    assert F.store_hash(masked) != base


def test_store_hash_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    root = store(tmp_path / "s")
    first = F.store_hash(root)
    cached = json.loads((root / F.STORE_HASH_FILE).read_text())
    assert cached["sha256"] == first and set(cached["files"]) == {"images.npy", "manifest.parquet", "meta.json"}
    calls = []
    monkeypatch.setattr(F, "_hash_store", lambda r: calls.append(r) or "recomputed")
    assert F.store_hash(root) == first and calls == []  # served from the cache file
    st = (root / "images.npy").stat()
    os.utime(root / "images.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert F.store_hash(root) == "recomputed" and len(calls) == 1  # a touched array file is hashed again


def test_store_hash_of_the_image_bytes_by_hand(tmp_path):
    root = store(tmp_path / "s")
    h = hashlib.sha256(b"images.npy\0" + (root / "images.npy").read_bytes())
    h.update(F.manifest_content(pd.read_parquet(root / "manifest.parquet"), ["A"]))
    assert F.store_hash(root) == h.hexdigest()
    with pytest.raises(FileNotFoundError, match="not a prepared store"):
        F.store_hash(tmp_path / "nothing")


def test_claim_state_dir_keeps_matching_and_removes_stale_state(tmp_path, caplog):
    state = tmp_path / "train"
    assert F.claim_state_dir(state, {"lr": 0.1, "data": "x"}) is False  # new: nothing to resume
    (state / "last.ckpt").write_text("weights")
    assert F.claim_state_dir(state, {"data": "x", "lr": 0.1}) is True and (state / "last.ckpt").is_file()
    with caplog.at_level("WARNING"):
        assert F.claim_state_dir(state, {"lr": 0.2, "data": "x"}) is False
    assert "changed: lr" in caplog.text and not (state / "last.ckpt").exists()
    assert F.read_fingerprint(state) == {"lr": 0.2, "data": "x"}
    (state / F.FINGERPRINT_FILE).unlink()  # state written by a version that recorded no fingerprint
    (state / "last.ckpt").write_text("old")
    assert F.claim_state_dir(state, {"lr": 0.2, "data": "x"}) is False and not (state / "last.ckpt").exists()
    assert F.changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_code_version_hashes_the_package_sources():
    version = F.code_version()
    assert version.startswith("0.") and "+src." in version and len(version.split("+src.")[1]) == 16
    assert F.code_version() is version  # once per process
