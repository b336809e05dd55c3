"""Damaged downloads: each case is the generator's output with one small edit, as a user's text editor would make it.

For every case: the strict CLI run exits 2 (1 would be a bug) and its message names the file and the row; the
stderr table counts the kind; ``skip_bad`` counts the same kind in its summary, and every image the edit did not
touch keeps the split it has in the undamaged dataset (splits come from the label tables, not from which files are
usable).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from cxrbench import cli
from cxrbench.data.prepare import prepare_dataset, resolve_reader
from cxrbench.data.problems import KINDS, LOSSES, hash_id

SIZES = {"rsna": 20, "siim": 20, "nih": 20, "chexpert": 30, "mimic": 8, "ms_cxr": 6, "covidx": 20, "object_cxr": 20}
KW = {"size": 16, "workers": 1, "fractions": (50, 100), "progress": False}


@dataclass
class Edit:
    """What an edit did: the raw image ids it touched, and the file and line the message must name."""

    ids: list[str]
    file: str
    line: int | None = None
    count: int = 1
    extra: dict = field(default_factory=dict)


# ---- file helpers (gz-aware: the MIMIC tables ship gzipped) -----------------------------------------------------


def _table(root: Path, name: str) -> Path:
    return root / name if (root / name).exists() else root / f"{name}.gz"


def read_lines(path: Path) -> list[str]:
    raw = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    return raw.splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def find(lines: list[str], pred, start: int = 1) -> int:
    """0-based index of the first line (after the header) matching ``pred``."""
    return next(i for i in range(start, len(lines)) if pred(lines[i]))


def set_field(path: Path, pred, col: int, value: str, sep: str = ",") -> tuple[int, list[str]]:
    """Set field ``col`` of the first data line matching ``pred``; returns (1-based line, its old fields)."""
    lines = read_lines(path)
    i = find(lines, pred)
    fields = lines[i].split(sep)
    old = list(fields)
    fields[col] = value
    lines[i] = sep.join(fields)
    write_lines(path, lines)
    return i + 1, old


# ---- the cases ------------------------------------------------------------------------------------------------


def _in_split(ctx, root: Path, dataset: str, pred=lambda r: True):
    """The first raw-index row (as a dict) that has a split in the undamaged store and satisfies ``pred``."""
    index = resolve_reader(dataset).read(root, ctx["options"][dataset]).index
    for _, row in index.iterrows():
        if row["image_id"] in ctx["splits"][dataset] and pred(row):
            return row
    raise AssertionError("no row to damage")


def rsna_negative(root):
    lines = read_lines(root / "stage_2_train_labels.csv")
    i = find(lines, lambda s: s.endswith(",,,,,0"))
    return i + 1, lines[i].split(",")[0]


def rsna_positive(root):
    lines = read_lines(root / "stage_2_train_labels.csv")
    i = find(lines, lambda s: s.endswith(",1"))
    return i + 1, lines[i].split(",")[0]


def e_rsna_missing(ctx, root):
    line, pid = rsna_negative(root)
    (root / "stage_2_train_images" / f"{pid}.dcm").unlink()
    return Edit([pid], f"stage_2_train_images/{pid}.dcm", line)


def e_rsna_truncated(ctx, root):
    line, pid = rsna_negative(root)
    path = root / "stage_2_train_images" / f"{pid}.dcm"
    path.write_bytes(path.read_bytes()[:300])
    return Edit([pid], f"stage_2_train_images/{pid}.dcm", line)


def e_rsna_bad_target(ctx, root):
    line, pid = rsna_negative(root)
    set_field(root / "stage_2_train_labels.csv", lambda s: s.startswith(pid), 5, "2")
    return Edit([pid], "stage_2_train_labels.csv", line)


def e_rsna_bad_box(ctx, root):
    line, pid = rsna_positive(root)
    set_field(root / "stage_2_train_labels.csv", lambda s: s.startswith(pid), 3, "")
    return Edit([pid], "stage_2_train_labels.csv", line)


def e_rsna_box_on_negative(ctx, root):
    line, pid = rsna_negative(root)
    set_field(root / "stage_2_train_labels.csv", lambda s: s.startswith(pid), 1, "5.0")
    return Edit([pid], "stage_2_train_labels.csv", line)


def e_rsna_repeated_negative(ctx, root):
    path = root / "stage_2_train_labels.csv"
    lines = read_lines(path)
    i = find(lines, lambda s: s.endswith(",,,,,0"))
    lines.insert(i + 1, lines[i])
    write_lines(path, lines)
    return Edit([lines[i].split(",")[0]], "stage_2_train_labels.csv", i + 2)


def e_rsna_box_outside(ctx, root):
    line, pid = rsna_positive(root)
    set_field(root / "stage_2_train_labels.csv", lambda s: s.startswith(pid), 1, "1000.0")
    return Edit([], "stage_2_train_labels.csv", line)


def e_rsna_box_clipped(ctx, root):
    line, pid = rsna_positive(root)
    set_field(root / "stage_2_train_labels.csv", lambda s: s.startswith(pid), 1, "-4.0")
    return Edit([], "stage_2_train_labels.csv", line)


def siim_single(root, positive: bool):
    """(1-based line, id) of the first image with exactly one row (positive or not)."""
    lines = read_lines(root / "train-rle.csv")
    ids = [s.split(",")[0] for s in lines]
    i = find(lines, lambda s: ids.count(s.split(",")[0]) == 1 and (s.strip().endswith("-1") != positive))
    return i + 1, ids[i]


def siim_file(root, iid):
    return next((root / "dicom-images-train").rglob(f"{iid}.dcm"))


def e_siim_missing(ctx, root):
    line, iid = siim_single(root, positive=False)
    siim_file(root, iid).unlink()
    return Edit([iid], "train-rle.csv", line)


def e_siim_garbage(ctx, root):
    line, iid = siim_single(root, positive=False)
    siim_file(root, iid).write_bytes(b"DICM? no" * 40)
    return Edit([iid], iid, line)


def e_siim_bad_rle(ctx, root):
    line, iid = siim_single(root, positive=True)
    set_field(root / "train-rle.csv", lambda s: s.startswith(iid), 1, " 3 2 5")
    return Edit([iid], "train-rle.csv", line)


def e_siim_rle_past_end(ctx, root):
    line, iid = siim_single(root, positive=True)
    set_field(root / "train-rle.csv", lambda s: s.startswith(iid), 1, " 4090 50")
    return Edit([iid], iid, line)


def e_siim_no_id(ctx, root):
    line, iid = siim_single(root, positive=False)
    set_field(root / "train-rle.csv", lambda s: s.startswith(iid), 0, "")
    return Edit([iid], "train-rle.csv", line)


def nih_row(ctx, root, pred=lambda r: True):
    row = _in_split(ctx, root, "nih", pred)
    return int(row["line"]), row["image_id"]


def e_nih_bad_label(ctx, root):
    line, iid = nih_row(ctx, root)
    set_field(root / "Data_Entry_2017.csv", lambda s: s.startswith(iid), 1, "Flu")
    return Edit([iid], "Data_Entry_2017.csv", line)


def e_nih_duplicate(ctx, root):
    line, iid = nih_row(ctx, root)
    lines = read_lines(root / "Data_Entry_2017.csv")
    lines.insert(line, lines[line - 1])
    write_lines(root / "Data_Entry_2017.csv", lines)
    return Edit([], "Data_Entry_2017.csv", line + 1)


def e_nih_in_no_list(ctx, root):
    line, iid = nih_row(ctx, root, lambda r: r["official_split"] == "test")
    write_lines(root / "test_list.txt", [s for s in read_lines(root / "test_list.txt") if s != iid])
    return Edit([iid], "Data_Entry_2017.csv", line)


def e_nih_in_both_lists(ctx, root):
    line, iid = nih_row(ctx, root, lambda r: r["official_split"] == "test")
    write_lines(root / "train_val_list.txt", [*read_lines(root / "train_val_list.txt"), iid])
    return Edit([iid], "test_list.txt", None)


def e_nih_box_label(ctx, root):
    line, _ = set_field(root / "BBox_List_2017.csv", lambda s: True, 1, "Flu")
    return Edit([], "BBox_List_2017.csv", line)


def e_nih_box_unknown_image(ctx, root):
    path = root / "BBox_List_2017.csv"
    lines = read_lines(path)
    write_lines(path, [*lines, "99999999_000.png,Mass,1.0,1.0,5.0,5.0,,,"])
    return Edit([], "BBox_List_2017.csv", len(lines) + 1)


def e_nih_box_outside(ctx, root):
    _, old = set_field(root / "BBox_List_2017.csv", lambda s: True, 2, "500.0")
    iid = old[0]
    return Edit([], "Data_Entry_2017.csv", ctx["lines"]["nih"][iid])


def e_nih_not_png(ctx, root):
    line, iid = nih_row(ctx, root)
    (root / "images" / iid).write_text("this is not a PNG")
    return Edit([iid], f"images/{iid}", line)


CX = "CheXpert-v1.0-small"


def cx_row(ctx, root):
    row = _in_split(ctx, root, "chexpert", lambda r: r["official_split"] == "train")
    return int(row["line"]), row["image_id"]


def e_cx_bad_label(ctx, root):
    line, path = cx_row(ctx, root)
    set_field(root / CX / "train.csv", lambda s: s.startswith(path), 17, "2.0")  # Fracture: not a competition label
    return Edit([path], f"{CX}/train.csv", line)


def e_cx_bad_view(ctx, root):
    line, path = cx_row(ctx, root)
    set_field(root / CX / "train.csv", lambda s: s.startswith(path), 3, "Sideways")
    return Edit([path], f"{CX}/train.csv", line)


def e_cx_missing(ctx, root):
    line, path = cx_row(ctx, root)
    (root / path).unlink()
    return Edit([path], path, line)


def e_cx_duplicate(ctx, root):
    line, path = cx_row(ctx, root)
    lines = read_lines(root / CX / "train.csv")
    lines.append(lines[line - 1])
    write_lines(root / CX / "train.csv", lines)
    return Edit([], f"{CX}/train.csv", len(lines))


def mimic_row(ctx, root):
    row = _in_split(ctx, root, "mimic")
    return int(row["line"]), row


def _report(root, row) -> Path:
    return root / Path(row["path"]).parent.with_suffix(".txt")


def _study_images(ctx, row):
    return [i for i, s in ctx["studies"].items() if s == row["study_id"]]


def e_mimic_report_missing(ctx, root):
    _, row = mimic_row(ctx, root)
    _report(root, row).unlink()
    return Edit(_study_images(ctx, row), _report(root, row).relative_to(root).as_posix(), None)


def e_mimic_report_empty(ctx, root):
    _, row = mimic_row(ctx, root)
    _report(root, row).write_text("")
    return Edit(_study_images(ctx, row), _report(root, row).relative_to(root).as_posix(), None)


def e_mimic_report_binary(ctx, root):
    _, row = mimic_row(ctx, root)
    _report(root, row).write_bytes(bytes(range(256)))
    return Edit(_study_images(ctx, row), _report(root, row).relative_to(root).as_posix(), None)


def e_mimic_no_split_row(ctx, root):
    line, row = mimic_row(ctx, root)
    path = _table(root, "mimic-cxr-2.0.0-split.csv")
    write_lines(path, [s for s in read_lines(path) if not s.startswith(row["image_id"])])
    return Edit([row["image_id"]], "mimic-cxr-2.0.0-metadata.csv", line)


def e_mimic_bad_label(ctx, root):
    _, row = mimic_row(ctx, root)
    path = _table(root, "mimic-cxr-2.0.0-chexpert.csv")
    line, _ = set_field(path, lambda s: s.split(",")[1] == row["study_id"], 2, "3.0")
    return Edit(_study_images(ctx, row), "mimic-cxr-2.0.0-chexpert.csv", line)


def e_mimic_missing_jpg(ctx, root):
    line, row = mimic_row(ctx, root)
    (root / row["path"]).unlink()
    return Edit([row["image_id"]], row["path"], line)


def covidx_line(ctx, root):
    row = _in_split(ctx, root, "covidx", lambda r: r["official_split"] == "train")
    return int(row["line"]), row["image_id"]


def e_covidx_short_line(ctx, root):
    line, name = covidx_line(ctx, root)
    path = root / "train_COVIDx9A.txt"
    lines = read_lines(path)
    lines[line - 1] = " ".join(lines[line - 1].split()[:3])
    write_lines(path, lines)
    return Edit([name], "train_COVIDx9A.txt", line)


def e_covidx_bad_class(ctx, root):
    line, name = covidx_line(ctx, root)
    path = root / "train_COVIDx9A.txt"
    lines = read_lines(path)
    f = lines[line - 1].split()
    lines[line - 1] = " ".join([f[0], f[1], "flu", f[3]])
    write_lines(path, lines)
    return Edit([name], "train_COVIDx9A.txt", line)


def e_covidx_duplicate(ctx, root):
    line, name = covidx_line(ctx, root)
    path = root / "train_COVIDx9A.txt"
    lines = read_lines(path)
    write_lines(path, [*lines, lines[line - 1]])
    return Edit([], "train_COVIDx9A.txt", len(lines) + 1)


def e_covidx_missing(ctx, root):
    line, name = covidx_line(ctx, root)
    (root / "train" / name).unlink()
    return Edit([name], f"train/{name}", line)


def e_object_bad_annotation(ctx, root):
    line, old = set_field(root / "train.csv", lambda s: not s.endswith(","), 1, "9 1 1 2 2")
    return Edit([old[0]], "train.csv", line)


def e_object_missing(ctx, root):
    row = _in_split(ctx, root, "object_cxr")
    (root / row["path"]).unlink()
    return Edit([row["image_id"]], row["path"], int(row["line"]))


def e_object_no_name(ctx, root):
    line, old = set_field(root / "train.csv", lambda s: s.endswith(","), 0, "")
    return Edit([old[0]], "train.csv", line)


MS = "MS_CXR_Local_Alignment_v1.1.0.csv"


def e_ms_bad_category(ctx, root):
    line, old = set_field(root / MS, lambda s: True, 1, "Flu")
    return Edit([i for i in ctx["splits"]["ms_cxr"] if i.startswith(old[0])], MS, line)


def e_ms_box_outside(ctx, root):
    line, old = set_field(root / MS, lambda s: True, 4, "500")
    return Edit([], MS, line)


CASES = {
    "rsna-missing-dicom": ("rsna", e_rsna_missing, "missing_file"),
    "rsna-truncated-dicom": ("rsna", e_rsna_truncated, "undecodable"),
    "rsna-target-2": ("rsna", e_rsna_bad_target, "bad_label"),
    "rsna-positive-without-box": ("rsna", e_rsna_bad_box, "bad_box"),
    "rsna-negative-with-box": ("rsna", e_rsna_box_on_negative, "bad_value"),
    "rsna-repeated-negative": ("rsna", e_rsna_repeated_negative, "conflicting_rows"),
    "rsna-box-outside": ("rsna", e_rsna_box_outside, "box_outside_image"),
    "rsna-box-past-border": ("rsna", e_rsna_box_clipped, "box_clipped"),
    "siim-missing-dicom": ("siim", e_siim_missing, "missing_file"),
    "siim-garbage-dicom": ("siim", e_siim_garbage, "undecodable"),
    "siim-odd-rle": ("siim", e_siim_bad_rle, "malformed_rle"),
    "siim-rle-past-last-pixel": ("siim", e_siim_rle_past_end, "mask_error"),
    "siim-empty-imageid": ("siim", e_siim_no_id, "no_image_id"),
    "nih-unknown-label": ("nih", e_nih_bad_label, "bad_label"),
    "nih-duplicate-row": ("nih", e_nih_duplicate, "duplicate_id"),
    "nih-in-no-list": ("nih", e_nih_in_no_list, "no_split"),
    "nih-in-both-lists": ("nih", e_nih_in_both_lists, "in_both_lists"),
    "nih-box-unknown-label": ("nih", e_nih_box_label, "box_bad_row"),
    "nih-box-unknown-image": ("nih", e_nih_box_unknown_image, "box_unknown_image"),
    "nih-box-outside": ("nih", e_nih_box_outside, "box_outside_image"),
    "nih-not-a-png": ("nih", e_nih_not_png, "undecodable"),
    "chexpert-label-2": ("chexpert", e_cx_bad_label, "bad_label"),
    "chexpert-bad-view": ("chexpert", e_cx_bad_view, "bad_value"),
    "chexpert-missing-jpg": ("chexpert", e_cx_missing, "missing_file"),
    "chexpert-duplicate-row": ("chexpert", e_cx_duplicate, "duplicate_id"),
    "mimic-report-missing": ("mimic", e_mimic_report_missing, "report_missing"),
    "mimic-report-empty": ("mimic", e_mimic_report_empty, "report_empty"),
    "mimic-report-binary": ("mimic", e_mimic_report_binary, "report_unreadable"),
    "mimic-no-split-row": ("mimic", e_mimic_no_split_row, "no_split"),
    "mimic-label-3": ("mimic", e_mimic_bad_label, "bad_label"),
    "mimic-missing-jpg": ("mimic", e_mimic_missing_jpg, "missing_file"),
    "covidx-three-fields": ("covidx", e_covidx_short_line, "malformed_line"),
    "covidx-unknown-class": ("covidx", e_covidx_bad_class, "bad_label"),
    "covidx-duplicate-line": ("covidx", e_covidx_duplicate, "duplicate_id"),
    "covidx-missing-image": ("covidx", e_covidx_missing, "missing_file"),
    "object-cxr-bad-annotation": ("object_cxr", e_object_bad_annotation, "malformed_annotation"),
    "object-cxr-missing-image": ("object_cxr", e_object_missing, "missing_file"),
    "object-cxr-empty-name": ("object_cxr", e_object_no_name, "no_image_id"),
    "ms-cxr-unknown-category": ("ms_cxr", e_ms_bad_category, "bad_label"),
    "ms-cxr-box-outside": ("ms_cxr", e_ms_box_outside, "box_outside_image"),
}


# ---- fixtures -------------------------------------------------------------------------------------------------


def _store_splits(out: Path, raw_ids) -> dict[str, str]:
    """{raw id: split} of a store (its manifest holds hashed ids)."""
    m = pd.read_parquet(out / "manifest.parquet")
    by_hash = dict(zip(m["image_id"], m["split"], strict=True))
    return {r: by_hash[hash_id(r, "cxrbench")] for r in raw_ids if hash_id(r, "cxrbench") in by_hash}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    gen = pytest.importorskip("cxrbench.data.synthetic")
    base = tmp_path_factory.mktemp("damage_base")
    gen.generate(base, seed=0, sizes=SIZES, image_size=64)
    options = {name: {} for name in SIZES}
    options["mimic"] = {"exclude_csv": str(base / "ms_cxr" / MS)}
    options["ms_cxr"] = {"images_root": str(base / "mimic")}
    options["chexpert"] = {"n_5x200": 2}
    return {"base": base, "options": options, "splits": {}, "lines": {}, "studies": {},
            "work": tmp_path_factory.mktemp("damage")}


def baseline(ctx, dataset: str) -> None:
    """Prepare the undamaged dataset once per module: {raw id: split}, raw lines and MIMIC studies."""
    if dataset in ctx["splits"]:
        return
    index = resolve_reader(dataset).read(ctx["base"] / dataset, ctx["options"][dataset]).index
    out = ctx["work"] / f"base_{dataset}"
    prepare_dataset(dataset, ctx["base"] / dataset, out, options=ctx["options"][dataset], **KW)
    ctx["splits"][dataset] = _store_splits(out, index["image_id"])
    ctx["lines"][dataset] = dict(zip(index["image_id"], index["line"], strict=True))
    if "study_id" in index:
        ctx["studies"] = dict(zip(index["image_id"], index["study_id"], strict=True))


def _cli(dataset: str, raw: Path, out: Path, options: dict, skip_bad: bool = False) -> int:
    resolved = {"raw": str(raw), "image_size": KW["size"], "split_protocol": "reference", "fraction_seed": 0,
                "fractions": list(KW["fractions"]), "skip_bad": skip_bad, "max_skipped_fraction": 0.001,
                "workers": 1, "options": options}
    return cli.main(["prepare", dataset, "--out", str(out), "--resolved", json.dumps(resolved)])


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_named_counted_and_leaves_other_splits_alone(ctx, case, capsys):
    dataset, edit, kind = CASES[case]
    baseline(ctx, dataset)
    root = ctx["work"] / case / dataset
    shutil.copytree(ctx["base"] / dataset, root)
    done = edit(ctx, root)
    capsys.readouterr()
    # strict (the default): exit 2 for data-losing kinds, one message naming file and row, the table on stderr
    code = _cli(dataset, root, ctx["work"] / case / "strict", ctx["options"][dataset])
    err = capsys.readouterr().err
    assert re.search(rf"^{kind}\s+\w+\s+{done.count}\s", err, re.M), err
    if KINDS[kind][0] in LOSSES:
        assert code == 2 and "Traceback" not in err
        message = err.strip().splitlines()[-1]
        assert message.startswith("cxrbench prepare: error:") and done.file in message, message
        if done.line is not None:
            assert f"line {done.line}" in message, message
        assert not (ctx["work"] / case / "strict").exists()
    else:
        assert code == 0
    # skip_bad: the same count in the summary; untouched images keep their split, touched ones are gone
    out = ctx["work"] / case / "skip"
    summary = prepare_dataset(dataset, root, out, skip_bad=True, max_skipped_fraction=1.0,
                              options=ctx["options"][dataset], **KW)
    assert summary["problems"].get(kind) == done.count
    before = ctx["splits"][dataset]
    after = _store_splits(out, before)
    removed = set(done.ids) if KINDS[kind][0] == "image" else set()
    assert summary["skipped"] == len(removed)
    assert {i: s for i, s in before.items() if i not in removed} == after
    meta = json.loads((out / "meta.json").read_text())
    assert meta["problem_counts"][kind] == done.count and sum(meta["lost_per_split"].values()) == len(removed)


def test_at_least_25_damage_kinds():
    assert len(CASES) >= 25 and len({k for _, _, k in CASES.values()}) >= 20


FILE_LEVEL = {
    # name: (dataset, edit(root), text the one-line message must contain)
    "nih-binary-data-entry": ("nih", lambda r: (r / "Data_Entry_2017.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"),
                              "Data_Entry_2017.csv: not UTF-8 text"),
    "covidx-binary-list": ("covidx", lambda r: (r / "test_COVIDx9A.txt").write_bytes(b"\xff\xfe\x00\x01"),
                           "test_COVIDx9A.txt: not UTF-8 text"),
    "rsna-missing-column": ("rsna", lambda r: (r / "stage_2_train_labels.csv").write_text("patientId,x\na,1\n"),
                            "stage_2_train_labels.csv: missing column(s)"),
    "siim-labels-missing": ("siim", lambda r: (r / "train-rle.csv").unlink(), "train-rle.csv"),
}


@pytest.mark.parametrize("case", list(FILE_LEVEL))
def test_file_level_damage_is_one_message_and_exit_2(ctx, case, capsys):
    dataset, edit, text = FILE_LEVEL[case]
    root = ctx["work"] / case / dataset
    shutil.copytree(ctx["base"] / dataset, root)
    edit(root)
    capsys.readouterr()
    assert _cli(dataset, root, ctx["work"] / case / "out", ctx["options"][dataset]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and text in err.strip().splitlines()[-1], err
