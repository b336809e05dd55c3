import gzip

import pandas as pd
import pytest

from cxrbench.data.formats._base import DataFormatError
from cxrbench.data.formats.mimic import LABELS
from cxrbench.registry import DATASETS

META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
REPORT = (
    "                                 FINAL REPORT\n INDICATION: ___\n \n FINDINGS: Lungs clear.\n \n"
    " IMPRESSION: Normal.\n"
)
# (dicom_id, subject, study, view, report)
IMAGES = [
    ("d1", "10000032", "50000001", "PA", REPORT),
    ("d2", "10000032", "50000001", "LATERAL", REPORT),
    ("d3", "10000032", "50000002", "AP", "FINAL REPORT\nFINDINGS: no leading space.\n"),
    ("d4", "11000001", "50000003", "AP", " FINAL REPORT\n INDICATION: cough\n"),
    ("d5", "12000002", "50000004", "PA", REPORT),
    ("d6", "12000002", "50000004", "AP", REPORT),
    ("d7", "13000003", "50000005", "PA", None),
]


def _write(tmp_path, gz=False, chexpert_rows=None):
    def put(name, text):
        if gz:
            with gzip.open(tmp_path / f"{name}.gz", "wt") as f:
                f.write(text)
        else:
            (tmp_path / name).write_text(text)

    meta = [f"{d},{s},{st},,{v},3056,2544,21800506,213014.531,,," for d, s, st, v, _ in IMAGES]
    put("mimic-cxr-2.0.0-metadata.csv", META_HEADER + "\n" + "\n".join(meta) + "\n")
    split = [f"{d},{st},{s},{'train' if d != 'd5' else 'test'}" for d, s, st, _, _ in IMAGES]
    put("mimic-cxr-2.0.0-split.csv", "dicom_id,study_id,subject_id,split\n" + "\n".join(split) + "\n")
    studies = dict.fromkeys((s, st) for _, s, st, _, _ in IMAGES)
    rows = chexpert_rows or [f"{s},{st}," + ",".join(["1.0", "-1.0", ""] + ["0.0"] * 11) for s, st in studies]
    put(
        "mimic-cxr-2.0.0-chexpert.csv",
        "subject_id,study_id," + ",".join(LABELS) + "\n" + "\n".join(rows) + "\n",
    )
    for d, s, st, _, report in IMAGES:
        folder = tmp_path / "files" / f"p{s[:2]}" / f"p{s}"
        (folder / f"s{st}").mkdir(parents=True, exist_ok=True)
        (folder / f"s{st}" / f"{d}.jpg").write_bytes(b"")
        if report is not None:
            (folder / f"s{st}.txt").write_text(report)
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_frontal_text_labels(tmp_path, gz, kinds, only):
    res = DATASETS.get("mimic")().read(_write(tmp_path, gz=gz), {})
    idx = res.index.set_index("image_id")
    assert list(idx.index) == ["d1", "d5", "d6", "d7"]  # d7's report is missing: kept, flagged (a problem)
    p = only(res, "report_missing")
    assert p.group == ("study_id", "50000005") and p.path == "files/p13/p13000003/s50000005.txt"
    assert kinds(res) == {"report_missing": 1} and pd.isna(idx.loc["d7", "text"])
    assert idx.loc["d1", "text"] == "Normal. Lungs clear."
    assert idx.loc["d1", "path"] == "files/p10/p10000032/s50000001/d1.jpg"
    assert idx.loc["d1", "patient"] == "10000032" and idx.loc["d5", "official_split"] == "test"
    assert idx.loc["d1", "Atelectasis"] == 1.0 and idx.loc["d1", "Pneumothorax"] == 0.0
    assert idx.loc["d1", ["Cardiomegaly", "Consolidation"]].isna().all()  # uncertain and blank -> NaN
    c = res.counts
    assert c["protocol_non_frontal"] == 1 and c["protocol_no_findings_impression"] == 2
    assert c["studies_without_findings_impression"] == 2 and c["pairs"] == 3


def test_uncertain_option_and_reference_split(tmp_path):
    fmt = DATASETS.get("mimic")()
    idx = fmt.read(_write(tmp_path), {"uncertain": "ones"}).index
    assert (idx["Cardiomegaly"] == 1.0).all()
    assert list(fmt.reference_split(idx, {})) == ["train", "valid", "train", "train"]


def test_exclude_ms_cxr_images_and_patients(tmp_path):
    root = _write(tmp_path)
    ex = tmp_path / "ms.csv"
    ex.write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
        "d6,Edema,edema,files/p12/p12000002/s50000004/d6.jpg,1,1,5,5,100,100,test\n"
    )
    res = DATASETS.get("mimic")().read(root, {"exclude_csv": str(ex)})
    assert list(res.index["image_id"]) == ["d1", "d7"]
    assert res.counts["protocol_ms_cxr_exclusion"] == 2 and res.counts["excluded_ms_cxr_images"] == 1
    assert res.counts["excluded_ms_cxr_patient_images"] == 1


def test_bad_label_missing_column_missing_file(tmp_path, only):
    rows = ["10000032,50000001," + ",".join(["3.0"] + ["0.0"] * 13)]
    _write(tmp_path, chexpert_rows=rows)
    res = DATASETS.get("mimic")().read(tmp_path, {})
    p = only(res, "bad_label")
    assert (p.table, p.line, p.column, p.group) == ("mimic-cxr-2.0.0-chexpert.csv", 2, "Atelectasis",
                                                      ("study_id", "50000001"))
    assert "'3.0'" in p.detail and res.index["Atelectasis"].isna().all()
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id\nd1,1\n")
    with pytest.raises(DataFormatError, match=r"split.csv.*'split'"):
        DATASETS.get("mimic")().read(tmp_path, {})
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata.csv.*PhysioNet"):
        DATASETS.get("mimic")().read(tmp_path, {})


def test_empty_and_binary_reports_are_problems(tmp_path, kinds):
    root = _write(tmp_path)
    (root / "files/p10/p10000032/s50000001.txt").write_text("")
    (root / "files/p12/p12000002/s50000004.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    res = DATASETS.get("mimic")().read(root, {})
    assert kinds(res) == {"report_missing": 1, "report_empty": 1, "report_unreadable": 1}
