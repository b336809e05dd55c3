import pytest
from sklearn.model_selection import train_test_split

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.object_cxr import parse_annotation
from cxrbench.registry import DATASETS


def _write(tmp_path, train_rows, dev_rows):
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / f"{name}.csv").write_text("image_name,annotation\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_parse_rect_ellipse_polygon():
    boxes, shapes = parse_annotation("0 10 20 30 40;1 5 6 15 26;2 1 2 9 4 3 8")
    assert boxes == [[10, 20, 30, 40], [5, 6, 15, 26], [1, 2, 9, 8]]
    assert shapes[0] == {"type": "rect", "xyxy": [10.0, 20.0, 30.0, 40.0]}
    assert shapes[1]["type"] == "ellipse" and shapes[2] == {"type": "polygon", "xy": [1, 2, 9, 4, 3, 8]}
    assert parse_annotation("") == ([], [])


@pytest.mark.parametrize(
    "ann, word",
    [
        ("0 1 2 3", "4 coordinates"),
        ("3 1 2 3 4", "type 3"),
        ("2 1 2 3 4 5", "polygon"),
        ("0 1 a 3 4", "integers"),
        ("0 5 5 5 9", "empty box"),
    ],
)
def test_bad_annotation_names_file_and_row(tmp_path, ann, word):
    _write(tmp_path, ["00001.jpg,", f'00002.jpg,"{ann}"'], ["08001.jpg,"])
    res = DATASETS.get("object_cxr")().read(tmp_path, {})
    (p,) = res.problems
    assert (p.kind, p.table, p.line, p.column, p.image) == ("malformed_annotation", "train.csv", 3, "annotation",
                                                            "00002.jpg")
    assert word in p.detail


def test_read_and_reference_split(tmp_path):
    train = [f"{i:05d}.jpg,{'0 1 1 5 5;1 2 2 8 9' if i % 2 else ''}" for i in range(1, 51)]
    dev = [f"{i:05d}.jpg," for i in range(8001, 8011)]
    fmt = DATASETS.get("object_cxr")()
    res = fmt.read(_write(tmp_path, train, dev), {})
    idx = res.index
    assert len(idx) == 60 and res.counts["positive"] == 25 and res.counts["objects"] == 50
    assert idx.iloc[0]["boxes"] == [[1, 1, 5, 5], [2, 2, 8, 9]] and idx.iloc[0]["path"] == "train/00001.jpg"
    assert idx.iloc[50]["path"] == "dev/08001.jpg"
    names = [r.split(",")[0] for r in train]
    for ts in (0.2, 0.1):
        split = fmt.reference_split(idx, {"test_size": ts} if ts != 0.2 else {})
        tr, va = train_test_split(names, test_size=ts, random_state=0)
        assert set(idx["image_id"][split == "train"]) == set(tr)
        assert set(idx["image_id"][split == "valid"]) == set(va)
        assert set(idx["image_id"][split == "test"]) == {r.split(",")[0] for r in dev}


def test_bad_row_kept_duplicate_dropped_and_missing_column(tmp_path, kinds):
    _write(tmp_path, ["00001.jpg,", "00002.jpg,9 1 1 2 2", "00001.jpg,"], ["08001.jpg,"])
    res = DATASETS.get("object_cxr")().read(tmp_path, {})
    assert list(res.index["image_id"]) == ["00001.jpg", "00002.jpg", "08001.jpg"]
    assert kinds(res) == {"malformed_annotation": 1, "duplicate_id": 1} and res.problems[1].line == 4
    _write(tmp_path, ["00001.jpg,"], [])
    (tmp_path / "dev.csv").write_text("image_name\n08001.jpg\n")
    with pytest.raises(DataFormatError, match=r"dev.csv.*'annotation'"):
        DATASETS.get("object_cxr")().read(tmp_path, {})
