"""prepare_dataset end to end on a tiny in-test reader: values, parallel = serial, resume, atomicity, skip_bad."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxrbench.data.prepare as prep
from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.images import ImageDecodeError, load_image, resize_mask, resize_pad
from cxrbench.data.masks import render_shapes
from cxrbench.data.prepare import hash_patient, prepare_dataset

N = 12


class Toy(DatasetFormat):
    """12 PNGs of 40 x (20 + i) px; rows 0-7 train, 8-9 valid, 10-11 test; row 5 left out by the split."""

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
                         "shapes": shapes, "text": f"report {i}", "view": "PA"})
        return ReadResult(pd.DataFrame(rows), skipped=[], counts={"rows": N})

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
    assert list(m["image_id"]) == [f"img{i:02d}" for i in kept]
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
    assert meta["counts"]["excluded_by_split"] == 1 and meta["skipped"] == []
    assert not (out / ".partial").exists()


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

    monkeypatch.setattr(prep, "load_image", fake)


def test_resume_after_kill_recomputes_only_unfinished_chunks(raw, tmp_path, monkeypatch):
    prepare_dataset(Toy(), raw, tmp_path / "clean", workers=1, **KW)
    out, calls = tmp_path / "out", []
    # prepared rows skip image 05, so chunk 2 (size 3) holds 07, 08, 09: kill at 08
    _kill_at(monkeypatch, "08.png", calls)
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(Toy(), raw, out, workers=1, **KW)
    assert not (out / "manifest.parquet").exists()
    assert sorted(p.name for p in (out / ".partial" / "chunks").iterdir()) == ["0.json", "1.json"]
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


def test_failure_removes_an_old_manifest(raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_dataset(Toy(), raw, out, workers=1, **KW)
    assert (out / "manifest.parquet").exists()
    _kill_at(monkeypatch, "03.png", [])
    with pytest.raises(RuntimeError):
        prepare_dataset(Toy(), raw, out, workers=1, **KW)
    assert not (out / "manifest.parquet").exists()


def test_bad_image_raises_naming_it_or_is_skipped_everywhere(raw, tmp_path):
    (raw / "img" / "03.png").unlink()
    data = (raw / "img" / "09.png").read_bytes()
    (raw / "img" / "09.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="03.png"):
        prepare_dataset(Toy(), raw, tmp_path / "strict", workers=1, **KW)
    assert not (tmp_path / "strict" / "manifest.parquet").exists()
    summary = prepare_dataset(Toy(), raw, tmp_path / "out", workers=2, skip_bad=True, **KW)
    s = read_store(tmp_path / "out")
    m = s["manifest"]
    assert summary["skipped"] == 2 and len(m) == 9 and s["images"].shape[0] == 9 == s["masks"].shape[0]
    assert not {"img03", "img09"} & set(m["image_id"]) and list(m["row"]) == list(range(9))
    assert [(d["image_id"], Path(d["path"]).name) for d in s["meta"]["skipped"]] == [
        ("img03", "03.png"), ("img09", "09.png")]
    assert "03.png" in s["meta"]["skipped"][0]["reason"]
    assert all("img03" not in t and "img09" not in t for t in s["fractions"].values())
    kept = [i for i in range(N) if i not in (3, 5, 9)]
    for r, i in enumerate(kept):  # rows still line up with the images after dropping
        np.testing.assert_array_equal(s["images"][r], resize_pad(load_image(raw / "img" / f"{i:02d}.png"), 32)[0])


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
    raw_index = reader.read(synthetic_root / name, {}).index.set_index("image_id")
    for r in (0, len(m) - 1):  # stored pixels = load + resize of the raw file
        path = synthetic_root / name / raw_index.loc[m["image_id"][r], "path"]
        np.testing.assert_array_equal(store.images[r], resize_pad(load_image(path), 32)[0])
    for b in store.boxes(np.arange(len(m))):
        assert ((b >= 0) & (b <= 32)).all() and (b[:, 2:] >= b[:, :2]).all()
    if store.masks is not None:
        assert store.masks.shape == store.images.shape and set(np.unique(store.masks)) <= {0, 1}
        if len(store.label_names) == 1:  # a positive image is exactly one with a mask
            np.testing.assert_array_equal(m["has_mask"], m[store.label_names[0]] == 1)
