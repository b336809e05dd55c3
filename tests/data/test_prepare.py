"""prepare_dataset end to end on a tiny in-test reader: values, parallel = serial, resume, atomicity, skip_bad."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxrbench.data.decode as decode
import cxrbench.data.prepare as prep
from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.images import load_image, resize_mask, resize_pad
from cxrbench.data.masks import render_shapes
from cxrbench.data.prepare import hash_patient, partial_dir, prepare_dataset
from cxrbench.data.problems import BadInputError, hash_id

N = 12


class Toy(DatasetFormat):
    """12 PNGs of 40 x (20 + i) px; rows 0-7 train, 8-9 valid, 10-11 test; row 5 left out by the protocol."""

    name = "toy_prepare"
    title = "Toy"
    label_names = ("A", "B")
    has_boxes = has_masks = has_text = True
    paper_split_sizes = (8, 2, 2)

    def read(self, raw_dir: Path, options: dict) -> ReadResult:
        rows = []
        for i in range(N):
            shapes = [{"type": "rect", "xyxy": [1, 2, 6, 10]}] if i % 2 == 0 else []
            boxes = [[2.0, 4.0, 10.0, 12.0]] if i % 3 == 0 else []
            rows.append({"image_id": f"img{i:02d}", "path": f"img/{i:02d}.png", "patient": f"PAT{i // 2}",
                         "official_split": None, "A": float(i % 2), "B": float(i % 4 == 0), "boxes": boxes,
                         "shapes": shapes, "text": f"report {i}", "view": "PA",
                         "protocol_drop": "protocol_chexpert_5x200" if i == 5 else None})
        return ReadResult(pd.DataFrame(rows), counts={"rows": N})

    def reference_split(self, index: pd.DataFrame, options: dict) -> pd.Series:
        split = ["train"] * 8 + ["valid"] * 2 + ["test"] * 2
        split[5] = None
        return pd.Series(split, index=index.index)


def make_raw(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (40, 20 + i), dtype=np.uint8)).save(root / "img" / f"{i:02d}.png")
    return root


KW = {"size": 32, "chunk_size": 3, "progress": False, "fractions": (10, 50, 100)}


def read_store(out: Path) -> dict:
    return {
        "images": np.load(out / "images.npy"),
        "masks": np.load(out / "masks.npy"),
        "manifest": pd.read_parquet(out / "manifest.parquet"),
        "meta": json.loads((out / "meta.json").read_text()),
        "fractions": {p.name: p.read_text() for p in sorted((out / "fractions").iterdir())},
    }


def assert_same_store(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
    pd.testing.assert_frame_equal(a["manifest"], b["manifest"])
    assert a["meta"] == b["meta"] and a["fractions"] == b["fractions"]


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


def test_prepare_values(raw, tmp_path):
    out = tmp_path / "out"
    summary = prepare_dataset(Toy(), raw, out, workers=1, **KW)
    s = read_store(out)
    m, kept = s["manifest"], [i for i in range(N) if i != 5]
    assert summary["n_images"] == 11 and summary["split_sizes"] == {"train": 7, "valid": 2, "test": 2}
    assert list(m["image_id"]) == [hash_id(f"img{i:02d}", "cxrbench") for i in kept]  # raw ids never stored
    assert list(m["row"]) == list(range(11)) and s["images"].shape == (11, 32, 32)
    assert list(m["split"]) == ["train"] * 7 + ["valid"] * 2 + ["test"] * 2
    for r, i in enumerate(kept):
        img = load_image(raw / "img" / f"{i:02d}.png")
        expected, g = resize_pad(img, 32)
        np.testing.assert_array_equal(s["images"][r], expected)
        # the mask is the row's shapes, or its boxes filled when it has no shapes
        rect = [1, 2, 6, 10] if i % 2 == 0 else [2, 4, 10, 12] if i % 3 == 0 else None
        mask = render_shapes([{"type": "rect", "xyxy": rect}] if rect else [], 40, 20 + i)
        np.testing.assert_array_equal(s["masks"][r], resize_mask(mask, g))
        assert (m["orig_h"][r], m["orig_w"][r], m["pad_y"][r]) == (40, 20 + i, 0)
        assert m["scale"][r] == pytest.approx(0.8) and m["pad_x"][r] == (32 - round((20 + i) * 0.8)) // 2
    # row 0: 40 x 20 -> scale 0.8, pad_x 8; box [2, 4, 10, 12] -> [9.6, 3.2, 16, 9.6]
    np.testing.assert_allclose(np.stack(m["boxes"][0]).astype(float), [[9.6, 3.2, 16.0, 9.6]], atol=1e-5)
    assert len(m["boxes"][1]) == 0
    assert list(m["has_mask"]) == [i % 2 == 0 or i % 3 == 0 for i in kept]
    np.testing.assert_array_equal(m["A"], [i % 2 for i in kept])
    assert m["A"].dtype == np.float32 and list(m["text"][:2]) == ["report 0", "report 1"]
    assert list(m["patient_hash"]) == [hash_patient(f"PAT{i // 2}", "cxrbench") for i in kept]
    assert "patient" not in m.columns and "path" not in m.columns and list(m["view"].unique()) == ["PA"]
    # fractions: nested, train only, files = columns
    f10, f50, f100 = (m[f"frac_{p}"].to_numpy() for p in (10, 50, 100))
    np.testing.assert_array_equal(f100, m["split"] == "train")
    assert (f10 <= f50).all() and (f50 <= f100).all() and f10.sum() >= 1 and f50.sum() == 4
    for p in (10, 50, 100):
        assert s["fractions"][f"frac_{p}.txt"].split() == list(m["image_id"][m[f"frac_{p}"]])
    meta = s["meta"]
    assert meta["paper_split_sizes"] == {"train": 8, "valid": 2, "test": 2}
    assert meta["label_names"] == ["A", "B"] and meta["size"] == 32 and meta["padding"] == "center"
    assert meta["counts"]["excluded_by_split"] == 1 and meta["problems"] == [] and meta["problem_counts"] == {}
    assert not partial_dir(out).exists() and sorted(p.name for p in out.parent.iterdir()) == ["out", "raw"]


def test_parallel_equals_serial(raw, tmp_path):
    prepare_dataset(Toy(), raw, tmp_path / "a", workers=1, **KW)
    prepare_dataset(Toy(), raw, tmp_path / "b", workers=2, **KW)
    assert_same_store(read_store(tmp_path / "a"), read_store(tmp_path / "b"))


def _kill_at(monkeypatch, path_part: str, calls: list) -> None:
    real = load_image  # the unpatched function from cxrbench.data.images

    def fake(path):
        calls.append(Path(path).name)
        if path_part and path_part in str(path):
            raise RuntimeError("simulated kill")
        return real(path)

    monkeypatch.setattr(decode, "load_image", fake)


def test_resume_after_kill_recomputes_only_unfinished_chunks(raw, tmp_path, monkeypatch):
    prepare_dataset(Toy(), raw, tmp_path / "clean", workers=1, **KW)
    out, calls = tmp_path / "out", []
    # prepared rows skip image 05, so chunk 2 (size 3) holds 07, 08, 09: kill at 08
    _kill_at(monkeypatch, "08.png", calls)
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(Toy(), raw, out, workers=1, **KW)
    assert not out.exists()  # nothing at the store's path until it is complete
    assert sorted(p.name for p in (partial_dir(out) / "chunks").iterdir()) == ["0.json", "1.json"]
    calls.clear()
    _kill_at(monkeypatch, "", calls)
    summary = prepare_dataset(Toy(), raw, out, workers=1, **KW)
    assert calls == ["07.png", "08.png", "09.png", "10.png", "11.png"]
    assert summary["resumed_chunks"] == 2 and summary["decoded"] == 5
    assert_same_store(read_store(tmp_path / "clean"), read_store(out))


def test_changed_inputs_discard_partial_work(raw, tmp_path, monkeypatch):
    out, calls = tmp_path / "out", []
    _kill_at(monkeypatch, "08.png", calls)
    with pytest.raises(RuntimeError):
        prepare_dataset(Toy(), raw, out, workers=1, **KW)
    _kill_at(monkeypatch, "", calls)
    summary = prepare_dataset(Toy(), raw, out, workers=1, **{**KW, "size": 16})
    assert summary["resumed_chunks"] == 0 and np.load(out / "images.npy").shape == (11, 16, 16)


def store_digest(out: Path) -> str:
    """sha256 over every file's relative path and bytes (and the set of files) of a store directory (not the
    content-hash cache, which records file mtimes)."""
    h = hashlib.sha256()
    for p in sorted(q for q in out.rglob("*") if q.name != ".store_hash.json"):
        h.update(str(p.relative_to(out)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_failed_rerun_leaves_the_previous_store_exactly(raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_dataset(Toy(), raw, out, workers=1, **KW)
    before = store_digest(out)
    _kill_at(monkeypatch, "03.png", [])
    with pytest.raises(RuntimeError):  # a crash (a bug) mid-decode
        prepare_dataset(Toy(), raw, out, workers=1, **{**KW, "size": 16})
    assert store_digest(out) == before
    monkeypatch.undo()
    (raw / "img" / "04.png").write_bytes(b"not a png")  # bad input: strict mode fails after the full pass
    with pytest.raises(BadInputError, match="04.png"):
        prepare_dataset(Toy(), raw, out, workers=1, **{**KW, "size": 16})
    assert store_digest(out) == before


def test_bad_images_all_named_or_skipped_from_their_split(raw, tmp_path, capsys):
    (raw / "img" / "03.png").unlink()
    data = (raw / "img" / "09.png").read_bytes()
    (raw / "img" / "09.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="03.png.*1 more problem") as err:
        prepare_dataset(Toy(), raw, tmp_path / "strict", workers=1, **KW)
    assert [p.kind for p in err.value.problems] == ["missing_file", "undecodable"]
    table = capsys.readouterr().err
    assert "missing_file" in table and "img/03.png" in table and "undecodable" in table and "img/09.png" in table
    assert not (tmp_path / "strict").exists()
    summary = prepare_dataset(Toy(), raw, tmp_path / "out", workers=2, skip_bad=True, max_skipped_fraction=0.5, **KW)
    s = read_store(tmp_path / "out")
    m = s["manifest"]
    assert summary["skipped"] == 2 and len(m) == 9 and s["images"].shape[0] == 9 == s["masks"].shape[0]
    assert summary["lost_per_split"] == {"train": 1, "valid": 1, "test": 0, "none": 0}
    assert summary["problems"] == {"missing_file": 1, "undecodable": 1}
    gone = {hash_id("img03", "cxrbench"), hash_id("img09", "cxrbench")}
    assert not gone & set(m["image_id"]) and list(m["row"]) == list(range(9))
    assert [(d["kind"], d["image"], d["split"]) for d in s["meta"]["problems"]] == [
        ("missing_file", hash_id("img03", "cxrbench"), "train"), ("undecodable", hash_id("img09", "cxrbench"), "valid")]
    assert b"img/0" not in (tmp_path / "out" / "meta.json").read_bytes()  # no image path in versioned files
    assert all(not gone & set(t.split()) for t in s["fractions"].values())
    kept = [i for i in range(N) if i not in (3, 5, 9)]
    for r, i in enumerate(kept):  # rows still line up with the images after dropping
        np.testing.assert_array_equal(s["images"][r], resize_pad(load_image(raw / "img" / f"{i:02d}.png"), 32)[0])
    with pytest.raises(BadInputError, match="1 of 7 train images lost.*max_skipped_fraction"):
        prepare_dataset(Toy(), raw, tmp_path / "ceiling", workers=1, skip_bad=True, max_skipped_fraction=0.1, **KW)


def test_patient_protocol_is_patient_disjoint(raw, tmp_path):
    pytest.importorskip("cxrbench.data.splits")
    prepare_dataset(Toy(), raw, tmp_path / "out", workers=1, split_protocol="patient", **KW)
    m = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(m) == N  # the patient protocol keeps every row
    assert (m.groupby("patient_hash")["split"].nunique() == 1).all()


def test_registered_name_and_drop_patient_ids(raw, tmp_path, monkeypatch):
    from cxrbench.registry import DATASETS

    monkeypatch.setattr(DATASETS, "_discovered", True)
    monkeypatch.setitem(DATASETS._items, "toy_prepare", Toy)
    prepare_dataset("toy_prepare", raw, tmp_path / "out", workers=1, patient_ids="drop", masks="none", **KW)
    assert "patient_hash" not in pd.read_parquet(tmp_path / "out" / "manifest.parquet").columns
    assert not (tmp_path / "out" / "masks.npy").exists()
    with pytest.raises(ValueError, match="padding"):
        prepare_dataset(Toy(), raw, tmp_path / "x", padding="middle", **KW)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    gen = pytest.importorskip("cxrbench.data.synthetic")
    root = tmp_path_factory.mktemp("synthetic")
    sizes = {"rsna": 16, "siim": 16, "object_cxr": 16, "covidx": 16, "nih": 16, "chexpert": 24, "mimic": 8,
             "ms_cxr": 8}
    gen.generate(root, seed=0, sizes=sizes, image_size=64)
    return root


@pytest.mark.parametrize("name", ["chexpert", "covidx", "mimic", "ms_cxr", "nih", "object_cxr", "rsna", "siim"])
def test_real_readers_on_generated_data(synthetic_root, name, tmp_path):
    from cxrbench.registry import DATASETS

    if name not in DATASETS:
        pytest.skip(f"reader {name!r} not registered")
    from cxrbench.data.store import PreparedDataset

    out = tmp_path / name
    summary = prepare_dataset(name, synthetic_root / name, out, size=32, workers=1, progress=False)
    store = PreparedDataset(out)
    m, reader = store.manifest, prep.resolve_reader(name)
    assert summary["n_images"] == len(m) == store.images.shape[0] > 0 and summary["skipped"] == 0
    assert set(m["split"]) <= {"train", "valid", "test"}
    np.testing.assert_array_equal(m["frac_100"], m["split"] == "train")
    raw_index = reader.read(synthetic_root / name, {}).index
    raw_index = raw_index.set_index(raw_index["image_id"].map(lambda i: hash_id(i, "cxrbench")))
    for r in (0, len(m) - 1):  # stored pixels = load + resize of the raw file
        path = synthetic_root / name / raw_index.loc[m["image_id"][r], "path"]
        np.testing.assert_array_equal(store.images[r], resize_pad(load_image(path), 32)[0])
    for b in store.boxes(np.arange(len(m))):
        assert ((b >= 0) & (b <= 32)).all() and (b[:, 2:] >= b[:, :2]).all()
    if store.masks is not None:
        assert store.masks.shape == store.images.shape and set(np.unique(store.masks)) <= {0, 1}
        if len(store.label_names) == 1:  # a positive image is exactly one with a mask
            np.testing.assert_array_equal(m["has_mask"], m[store.label_names[0]] == 1)
