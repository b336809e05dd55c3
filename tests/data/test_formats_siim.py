import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.siim import row_split_sizes
from cxrbench.registry import DATASETS


def _write(tmp_path, rows, header="ImageId, EncodedPixels", with_files=True):
    root = tmp_path / "dicom-images-train"
    root.mkdir(exist_ok=True)
    if with_files:
        for iid in dict.fromkeys(r.split(",")[0] for r in rows):
            d = root / f"1.2.{iid}" / f"1.3.{iid}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{iid}.dcm").write_bytes(b"")
    (tmp_path / "train-rle.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_header_quirk_both_minus_one_variants_and_or(tmp_path):
    rows = ["img1, 3 2 5 2", "img2,-1", "img1, 20 1", "img3, -1"]
    res = DATASETS.get("siim")().read(_write(tmp_path, rows), {})
    idx = res.index.set_index("image_id")
    assert list(res.index["image_id"]) == ["img1", "img2", "img3"]
    assert idx.loc["img1", "shapes"] == [{"type": "rle", "rle": "3 2 5 2"}, {"type": "rle", "rle": "20 1"}]
    assert idx.loc["img2", "shapes"] == [] and idx.loc["img3", "shapes"] == []
    assert list(idx["Pneumothorax"]) == [1.0, 0.0, 0.0]
    assert idx.loc["img1", "path"] == "dicom-images-train/1.2.img1/1.3.img1/img1.dcm"


def _multi_rows(n=200):
    rows = []
    for i in range(n):
        reps = 3 if i % 4 == 0 else 1
        rows += [f"im{i:04d}, {i + 1} 2" if reps > 1 else f"im{i:04d}, -1"] * reps
    return rows


def test_reference_split_per_image_no_leak(tmp_path):
    rows = _multi_rows()
    fmt = DATASETS.get("siim")()
    res = fmt.read(_write(tmp_path, rows), {})
    split = fmt.reference_split(res.index, {})
    ids = list(dict.fromkeys(r.split(",")[0] for r in rows))
    train, rest = train_test_split(ids, test_size=0.3, random_state=0)
    test, valid = train_test_split(rest, test_size=0.5, random_state=0)
    got = {s: set(res.index["image_id"][split == s]) for s in ("train", "valid", "test")}
    assert got == {"train": set(train), "valid": set(valid), "test": set(test)}
    assert sum(len(v) for v in got.values()) == 200  # every image in exactly one split
    # the leaky row-level split puts some multi-row images into two splits; counted for the report
    assert res.counts["row_split_images_in_two_splits"] > 0
    assert res.counts == {**res.counts, **row_split_sizes([r.split(",")[0] for r in rows])}


def test_bad_rle_named_and_kept(tmp_path, only):
    _write(tmp_path, ["a, 3 2 5", "b, -1"])
    res = DATASETS.get("siim")().read(tmp_path, {})
    p = only(res, "malformed_rle")
    assert (p.table, p.line, p.column, p.image) == ("train-rle.csv", 2, "EncodedPixels", "a") and "odd" in p.detail
    assert list(res.index["image_id"]) == ["a", "b"]


def test_missing_column_and_missing_dicom(tmp_path):
    _write(tmp_path, ["a,-1"], header="ImageId,Pixels")
    with pytest.raises(DataFormatError, match=r"train-rle.csv.*'EncodedPixels'"):
        DATASETS.get("siim")().read(tmp_path, {})
    _write(tmp_path, ["zz,-1"], with_files=False)
    res = DATASETS.get("siim")().read(tmp_path, {})
    # the image keeps its place in the index (and so in the split); its problem names the row and the file
    assert list(res.index["image_id"]) == ["zz"] and pd.isna(res.index["path"][0])
    p = res.problems[0]
    assert (p.kind, p.line, p.image) == ("missing_file", 2, "zz") and "zz.dcm" in p.detail


def test_missing_file_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-rle.csv.*SIIM"):
        DATASETS.get("siim")().read(tmp_path, {})
