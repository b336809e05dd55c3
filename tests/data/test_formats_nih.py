import pandas as pd
import pytest

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.nih import LABELS, bracket_header
from cxrbench.registry import DATASETS

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def _write(tmp_path, n_patients=40, entry_rows=None, bbox_rows=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    rows, names = [], []
    for p in range(1, n_patients + 1):
        for k in range(1 + p % 3):
            name = f"{p:08d}_{k:03d}.png"
            label = "No Finding" if p % 2 else "Cardiomegaly|Pleural_Thickening"
            rows.append(f"{name},{label},{k},{p},58,M,PA,2682,2749,0.143,0.143")
            names.append(name)
    rows = rows if entry_rows is None else entry_rows
    (tmp_path / "Data_Entry_2017.csv").write_text(ENTRY_HEADER + "\n" + "\n".join(rows) + "\n")
    bbox = (
        bbox_rows
        if bbox_rows is not None
        else [f"{names[1]},Infiltrate,10.5,20,30,40,,,", f"{names[1]},Mass,1,2,3,4,,,"]
    )
    (tmp_path / "BBox_List_2017.csv").write_text(BBOX_HEADER + "\n" + "\n".join(bbox) + "\n")
    test = [n for n in names if int(n[:8]) > 30]
    (tmp_path / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    return tmp_path, names


def test_bracket_header():
    assert bracket_header(ENTRY_HEADER.split(","))[-4:] == [
        "OriginalImage[Width]",
        "OriginalImage[Height]",
        "OriginalImagePixelSpacing[x]",
        "OriginalImagePixelSpacing[y]",
    ]
    assert bracket_header(BBOX_HEADER.split(",")) == [
        "Image Index",
        "Finding Label",
        "Bbox [x]",
        "Bbox [y]",
        "Bbox [w]",
        "Bbox [h]",
        "",
        "",
        "",
    ]


def test_read_labels_boxes_official(tmp_path):
    root, names = _write(tmp_path)
    res = DATASETS.get("nih")().read(root, {})
    idx = res.index.set_index("image_id")
    assert len(idx) == len(names) and list(res.index.columns[7:21]) == list(LABELS)
    row = idx.loc[names[1]]  # patient 1 has 2 images: names[0], names[1]; label "No Finding"
    assert row[list(LABELS)].sum() == 0 and row["patient"] == "1" and row["path"] == f"images/{names[1]}"
    assert row["boxes"] == [[10.5, 20.0, 40.5, 60.0], [1.0, 2.0, 4.0, 6.0]]
    assert row["box_labels"] == ["Infiltration", "Mass"]
    p2 = idx.loc["00000002_000.png"]
    assert p2["Cardiomegaly"] == 1 and p2["Pleural_Thickening"] == 1 and p2[list(LABELS)].sum() == 2
    assert set(idx["official_split"]) == {"train", "test"}
    assert res.counts["test"] == sum(int(n[:8]) > 30 for n in names)


def test_reference_split_patient_disjoint_90_10(tmp_path):
    root, names = _write(tmp_path)
    fmt = DATASETS.get("nih")()
    idx = fmt.read(root, {}).index
    split = fmt.reference_split(idx, {"split_seed": 1})
    assert (split[idx["official_split"] == "test"] == "test").all()
    tv = idx["official_split"] == "train"
    assert set(split[tv]) == {"train", "valid"}
    assert (split[tv] == "valid").sum() >= round(0.1 * tv.sum())
    per_patient = pd.DataFrame({"p": idx["patient"], "s": split}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    assert split.equals(fmt.reference_split(idx, {"split_seed": 1}))


def test_unknown_label_is_recorded(tmp_path, only):
    rows = ["a.png,Cardiomegaly,0,1,1,M,PA,1,1,1,1", "b.png,Flu|Mass,0,2,1,M,PA,1,1,1,1"]
    root, _ = _write(tmp_path, entry_rows=rows, bbox_rows=[])
    res = DATASETS.get("nih")().read(root, {})
    p = only(res, "bad_label")
    assert (p.table, p.line, p.column, p.image) == ("Data_Entry_2017.csv", 3, "Finding Labels", "b.png")
    assert "Flu" in p.detail and list(res.index["image_id"]) == ["a.png", "b.png"]


def test_duplicates_missing_column_missing_file(tmp_path, only):
    rows = ["a.png,Mass,0,1,1,M,PA,1,1,1,1", "a.png,Mass,1,1,1,M,PA,1,1,1,1"]
    root, _ = _write(tmp_path, entry_rows=rows, bbox_rows=[])
    res = DATASETS.get("nih")().read(root, {})
    assert only(res, "duplicate_id").line == 3 and list(res.index["image_id"]) == ["a.png"]
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Mass\n")
    with pytest.raises(DataFormatError, match=r"Data_Entry_2017.csv.*'Patient ID'"):
        DATASETS.get("nih")().read(root, {})
    (root / "test_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_list.txt.*ChestX-ray14"):
        DATASETS.get("nih")().read(root, {})
