import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from cxrbench.registry import DATASETS

CLASSES = ("normal", "pneumonia", "COVID-19")


def _write(tmp_path, train_lines, test_lines):
    for d in ("train", "test"):
        (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / "train_COVIDx9A.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test_COVIDx9A.txt").write_text("\n".join(test_lines) + "\n")
    return tmp_path


def _lines(prefix, n):
    return [f"P{i // 2} {prefix}{i:03d}.png {CLASSES[i % 3]} src{i % 2}" for i in range(n)]


def test_read_one_hot_and_paths(tmp_path):
    res = DATASETS.get("covidx")().read(_write(tmp_path, _lines("a", 50), _lines("t", 9)), {})
    idx = res.index
    assert len(idx) == 59
    row = idx.iloc[2]
    assert row["image_id"] == "a002.png" and row["path"] == "train/a002.png" and row["patient"] == "P1"
    assert [row[c] for c in CLASSES] == [0.0, 0.0, 1.0]
    assert (idx[list(CLASSES)].sum(axis=1) == 1).all()
    assert idx.iloc[50]["path"] == "test/t000.png" and idx.iloc[50]["official_split"] == "test"
    assert res.counts["test_COVID-19"] == 3


def test_reference_split_exact_membership(tmp_path):
    fmt = DATASETS.get("covidx")()
    train_lines = _lines("a", 101)
    idx = fmt.read(_write(tmp_path, train_lines, _lines("t", 7)), {}).index
    split = fmt.reference_split(idx, {})
    rows = list(range(101))
    tr, va = train_test_split(rows, train_size=0.8, random_state=0)
    names = np.array([ln.split()[1] for ln in train_lines])
    assert set(idx["image_id"][split == "train"]) == set(names[tr])
    assert set(idx["image_id"][split == "valid"]) == set(names[va])
    assert (split == "test").sum() == 7 and set(idx["image_id"][split == "test"]) == {f"t{i:03d}.png" for i in range(7)}


def test_bad_field_count_and_class(tmp_path, kinds, only):
    _write(tmp_path, ["P1 a.png normal s", "P2 b.png pneumonia", "P4 d.png flu s"], ["P3 c.png normal s"])
    res = DATASETS.get("covidx")().read(tmp_path, {})
    assert kinds(res) == {"malformed_line": 1, "bad_label": 1}
    p = only(res, "malformed_line")
    assert (p.table, p.line) == ("train_COVIDx9A.txt", 2) and "expected 4" in p.detail
    q = only(res, "bad_label")
    assert (q.line, q.image) == (3, "d.png") and "'flu'" in q.detail
    # the malformed line stays as a placeholder row: its position counts in the reference split
    assert list(res.index["image_id"]) == ["a.png", p.image, "d.png", "c.png"] and pd.isna(res.index["path"][1])


def test_duplicate_filename(tmp_path, only):
    _write(tmp_path, ["P1 a.png normal s", "P2 a.png normal s"], ["P3 c.png normal s"])
    res = DATASETS.get("covidx")().read(tmp_path, {})
    p = only(res, "duplicate_id")
    assert (p.table, p.line, p.image) == ("train_COVIDx9A.txt", 2, "a.png")
    assert list(res.index["image_id"]) == ["a.png", "c.png"]


def test_missing_file(tmp_path):
    (tmp_path / "train_COVIDx9A.txt").write_text("P1 a.png normal s\n")
    with pytest.raises(FileNotFoundError, match="test_COVIDx9A.txt.*COVIDx"):
        DATASETS.get("covidx")().read(tmp_path, {})
