import numpy as np
import pytest

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.chexpert import ALL_LABELS, COLUMNS, COMPETITION, five_x200
from cxrbench.registry import DATASETS

TOP = "CheXpert-v1.0-small"


def _row(folder, pid, study, view, labels):
    vals = [labels.get(n, "") for n in ALL_LABELS]
    kind = "frontal" if view == "Frontal" else "lateral"
    path = f"{TOP}/{folder}/patient{pid:05d}/study{study}/view1_{kind}.jpg"
    return ",".join([path, "Female", "68", view, "AP" if view == "Frontal" else ""] + vals)


def _write(tmp_path, train_rows, valid_rows):
    d = tmp_path / TOP
    d.mkdir(exist_ok=True)
    header = ",".join(COLUMNS)
    (d / "train.csv").write_text(header + "\n" + "\n".join(train_rows) + "\n")
    (d / "valid.csv").write_text(header + "\n" + "\n".join(valid_rows) + "\n")
    return tmp_path


def test_header_has_19_columns():
    assert len(COLUMNS) == 19 and COLUMNS[:5] == ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def test_uones_uzeros_blank_and_frontal_only(tmp_path):
    unc = {n: "-1.0" for n in COMPETITION}
    rows = [
        _row("train", 1, 1, "Frontal", unc),
        _row("train", 1, 1, "Lateral", unc),
        _row("train", 2, 1, "Frontal", {"Edema": "1.0", "Cardiomegaly": "0.0"}),
    ]
    res = DATASETS.get("chexpert")().read(_write(tmp_path, rows, [_row("valid", 64541, 1, "Frontal", {})]), {})
    idx = res.index
    assert len(idx) == 3 and res.counts["train_lateral_dropped"] == 1
    u = idx.iloc[0]
    assert [u[c] for c in COMPETITION] == [
        1.0,
        0.0,
        0.0,
        1.0,
        1.0,
    ]  # Atel 1, Cardio 0, Consol 0, Edema 1, PE 1
    assert [idx.iloc[1][c] for c in COMPETITION] == [0.0, 0.0, 0.0, 1.0, 0.0]  # blank -> 0
    assert u["patient"] == "patient00001" and u["path"].startswith(f"{TOP}/train/")
    assert list(idx["official_split"]) == ["train", "train", "valid"]


def _big(tmp_path, n=400):
    rows = []
    for i in range(n):
        k = i % 6
        labels = {COMPETITION[k]: "1.0"} if k < 5 else {"Edema": "1.0", "Atelectasis": "1.0"}
        rows.append(_row("train", i, 1, "Frontal", labels))
    valid = [_row("valid", 64541 + i, 1, "Frontal", {}) for i in range(7)]
    return _write(tmp_path, rows, valid)


def test_5x200_and_reference_split(tmp_path):
    fmt = DATASETS.get("chexpert")()
    res = fmt.read(_big(tmp_path), {"n_5x200": 10})
    idx = res.index
    assert res.counts["in_5x200"] == 50
    # first 10 rows in file order with exactly that one positive, per label: rows i with i % 6 == k, i < 60
    expected = np.array([(i % 6 < 5) and i < 60 for i in range(400)] + [False] * 7)
    np.testing.assert_array_equal(idx["in_5x200"].to_numpy(), expected)
    split = fmt.reference_split(idx, {"split_seed": 0})
    assert split[idx["in_5x200"]].isna().all()
    assert (split == "test").sum() == 7 and (split == "valid").sum() == 35  # 10 % of 350
    assert (split == "train").sum() == 315
    again = fmt.reference_split(idx, {"split_seed": 0, "valid_size": 20})
    assert (again == "valid").sum() == 20 and (again == "train").sum() == 330
    assert not split.equals(fmt.reference_split(idx, {"split_seed": 1}))
    assert five_x200(idx, 1).sum() == 5


def test_bad_value_is_recorded_and_the_row_kept(tmp_path, kinds, only):
    rows = [_row("train", 1, 1, "Frontal", {}), _row("train", 2, 1, "Frontal", {"Fracture": "2.0"}),
            _row("train", 3, 1, "Sideways", {})]
    _write(tmp_path, rows, [])
    res = DATASETS.get("chexpert")().read(tmp_path, {})
    assert kinds(res) == {"bad_label": 1, "bad_value": 1}
    p = only(res, "bad_label")
    assert (p.table, p.line, p.column) == (f"{TOP}/train.csv", 3, "Fracture") and "'2.0'" in p.detail
    assert p.image == f"{TOP}/train/patient00002/study1/view1_frontal.jpg"
    assert only(res, "bad_value").line == 4 and "Frontal or Lateral" in only(res, "bad_value").detail
    assert len(res.index) == 3  # bad rows stay in the index (the split is computed over the table as published)


def test_missing_column_duplicate_missing_file(tmp_path, only):
    d = tmp_path / TOP
    d.mkdir()
    (d / "train.csv").write_text("Path,Sex\nx,y\n")
    (d / "valid.csv").write_text("Path,Sex\nx,y\n")
    with pytest.raises(DataFormatError, match=r"train.csv.*'Age'"):
        DATASETS.get("chexpert")().read(tmp_path, {})
    r = _row("train", 1, 1, "Frontal", {})
    _write(tmp_path, [r, r], [])
    res = DATASETS.get("chexpert")().read(tmp_path, {})
    p = only(res, "duplicate_id")
    assert p.line == 3 and "line 2" in p.detail and len(res.index) == 1
    with pytest.raises(FileNotFoundError, match="valid.csv.*CheXpert-v1.0-small"):
        DATASETS.get("chexpert")().read(tmp_path / "empty", {})
