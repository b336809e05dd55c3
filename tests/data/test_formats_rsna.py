import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from cxrbench.data.formats._base import DataFormatError
from cxrbench.registry import DATASETS

HEADER = "patientId,x,y,width,height,Target\n"


def _write(tmp_path, body):
    (tmp_path / "stage_2_train_images").mkdir(exist_ok=True)
    (tmp_path / "stage_2_train_labels.csv").write_text(HEADER + body)
    return tmp_path


def _ids(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{v:08x}-0000-4000-8000-{i:012d}" for i, v in enumerate(rng.integers(0, 2**31, n))]


def _fixture(tmp_path, n=300):
    lines = []
    for k, pid in enumerate(_ids(n)):
        if k % 3 == 0:
            lines += [f"{pid},10.5,20,30,40.5,1", f"{pid},100,200,50,60,1"]
        else:
            lines.append(f"{pid},,,,,0")
    return _write(tmp_path, "\n".join(lines) + "\n")


def test_read_groups_rows_and_boxes(tmp_path):
    res = DATASETS.get("rsna")().read(_fixture(tmp_path), {})
    idx = res.index
    assert len(idx) == 300 and res.counts["rows"] == 400 and res.counts["positive"] == 100
    first = idx.iloc[0]
    assert first["boxes"] == [[10.5, 20.0, 40.5, 60.5], [100.0, 200.0, 150.0, 260.0]]
    assert first["Pneumonia"] == 1.0 and idx.iloc[1]["boxes"] == [] and idx.iloc[1]["Pneumonia"] == 0.0
    assert first["path"] == f"stage_2_train_images/{first['image_id']}.dcm"


def test_reference_split_exact_membership(tmp_path):
    fmt = DATASETS.get("rsna")()
    idx = fmt.read(_fixture(tmp_path), {}).index
    split = fmt.reference_split(idx, {})
    ids = sorted(idx["image_id"])
    test_size = round(10674 / 26684 * 300)
    train, rest = train_test_split(ids, test_size=test_size, random_state=0)
    test, valid = train_test_split(rest, test_size=0.5, random_state=0)
    got = {s: set(idx["image_id"][split == s]) for s in ("train", "valid", "test")}
    assert got == {"train": set(train), "valid": set(valid), "test": set(test)}
    assert test_size == 120 and (len(train), len(test), len(valid)) == (180, 60, 60)
    explicit = fmt.reference_split(idx, {"test_size": 0.5})
    assert (explicit == "train").sum() == 150


def test_bad_target_and_box_recorded(tmp_path, kinds):
    ids = _ids(4)
    _write(tmp_path, f"{ids[0]},,,,,0\n{ids[1]},,,,,2\n{ids[2]},1,1,5,5,1\n{ids[3]},1,1,-5,5,1\n")
    res = DATASETS.get("rsna")().read(tmp_path, {})
    assert list(res.index["image_id"]) == ids  # bad rows stay: the split is over every listed id
    assert kinds(res) == {"bad_label": 1, "bad_box": 1}
    p, q = res.problems
    assert (p.line, p.column, p.image) == (3, "Target", ids[1]) and "'2'" in p.detail
    assert (q.line, q.image) == (5, ids[3]) and "positive width" in q.detail


def test_missing_column_and_file(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,Target\nabc,,,,0\n")
    with pytest.raises(DataFormatError, match=r"stage_2_train_labels.csv.*'height'"):
        DATASETS.get("rsna")().read(tmp_path, {})
    with pytest.raises(FileNotFoundError, match="rsna-pneumonia-detection-challenge"):
        DATASETS.get("rsna")().read(tmp_path / "nowhere", {})


def test_duplicated_negative_is_a_conflict(tmp_path, only):
    _write(tmp_path, "aaa,,,,,0\naaa,,,,,0\nbbb,,,,,0\n")
    p = only(DATASETS.get("rsna")().read(tmp_path, {}), "conflicting_rows")
    assert (p.line, p.image) == (3, "aaa") and "lines [2, 3]" in p.detail
