import pytest

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.ms_cxr import CATEGORIES, CSV
from cxrbench.registry import DATASETS

HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split"
P1 = "files/p10/p10000032/s50000001/d1.jpg"


def _write(tmp_path, rows):
    raw, mimic = tmp_path / "ms_cxr", tmp_path / "mimic"
    raw.mkdir(exist_ok=True)
    mimic.mkdir(exist_ok=True)
    (raw / CSV).write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return raw, mimic


def test_phrases_boxes_categories(tmp_path):
    rows = [
        f"d1,Pneumonia,left lower lobe pneumonia,{P1},10,20,30,40,2544,3056,train",
        f"d1,Pneumonia,left lower lobe pneumonia,{P1},100,100,5,6,2544,3056,train",
        f"d1,Edema,mild edema,{P1},0,0,50,50,2544,3056,train",
        "d2,Pneumothorax,small apical pneumothorax,files/p11/p11000001/s50000002/d2.jpg,1,2,3,4,100,100,val",
    ]
    raw, mimic = _write(tmp_path, rows)
    fmt = DATASETS.get("ms_cxr")()
    res = fmt.read(raw, {})  # default images_root = <raw>/../mimic
    idx = res.index
    assert list(idx["image_id"]) == ["d1#0", "d1#1", "d2#0"]
    assert idx.iloc[0]["boxes"] == [[10.0, 20.0, 40.0, 60.0], [100.0, 100.0, 105.0, 106.0]]
    assert idx.iloc[0]["text"] == "left lower lobe pneumonia" and idx.iloc[0]["patient"] == "10000032"
    assert idx.iloc[0]["path"] == str(mimic.resolve() / P1)
    assert [idx.iloc[1][c] for c in CATEGORIES] == [float(c == "Edema") for c in CATEGORIES]
    assert list(fmt.reference_split(idx, {})) == ["train", "train", "valid"]
    assert res.counts == {"rows": 4, "images": 2, "phrases": 3, "boxes": 4} and res.problems == []
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert fmt.read(raw, {"images_root": str(other)}).index.iloc[0]["path"] == str(other / P1)


def test_bad_rows(tmp_path, kinds):
    raw, _ = _write(tmp_path, [f"d1,Flu,x,{P1},1,1,1,1,1,1,train", f"d1,Edema,x,{P1},1,1,0,1,1,1,train"])
    res = DATASETS.get("ms_cxr")().read(raw, {})
    assert kinds(res) == {"bad_label": 1, "bad_box": 1}
    first = res.problems[0]
    assert (first.table, first.line, first.column, first.group) == (CSV, 2, "category_name", ("dicom_id", "d1"))
    assert "'Flu'" in first.detail and res.problems[1].line == 3


def test_missing_column_and_images_root(tmp_path):
    raw, _ = _write(tmp_path, ["d1,Edema"])
    (raw / CSV).write_text("dicom_id,category_name\nd1,Edema\n")
    with pytest.raises(DataFormatError, match=rf"{CSV}.*'label_text'"):
        DATASETS.get("ms_cxr")().read(raw, {})
    with pytest.raises(FileNotFoundError, match="images_root"):
        DATASETS.get("ms_cxr")().read(raw, {"images_root": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="MS-CXR"):
        DATASETS.get("ms_cxr")().read(tmp_path / "nothing", {})
