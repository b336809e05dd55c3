"""finetune_medklip: MedKLIP's split files (its exact CSV format, written here by hand) give exactly their rows;
without them the task is not applicable and says what to provide; bad files are errors naming file and line."""

import json

import numpy as np
import pandas as pd
import pytest

from cxrbench.data.problems import hash_id
from cxrbench.registry import TASKS
from cxrbench.tasks._base import NotApplicable
from cxrbench.tasks.finetune_medklip import (
    SplitFileError,
    fraction_rows,
    medklip_rows,
    read_split_file,
    split_files,
)

# MedKLIP's header (Sample_zero-shot_Classification_CXR14/data_sample/test.csv) and its row layout
HEADER = ("img_path,Image Index,Finding Label,atelectasis,cardiomegaly,pleural effusion,infiltration,lung mass,"
          "lung nodule,pneumonia,pneumothorax,consolidation,edema,emphysema,fibrosis,pleural thicken,hernia")
NAMES = [f"{p:08d}_{k:03d}.png" for p in range(1, 7) for k in range(4)]  # 24 NIH-style image names


def line(name, label="No Finding"):
    zeros = ",".join(["0"] * 14)
    return f"/data/ChestXray8/images_001/images/{name},{name},{label},{zeros}"


def write(path, names):
    path.write_text("\n".join([HEADER, *[line(n) for n in names]]) + "\n")
    return str(path)


def store(make_store):
    """A FakeStore holding NAMES (manifest image ids hashed as prepare hashes them), two labels."""
    rng = np.random.default_rng(0)
    n = len(NAMES)
    y = np.zeros((n, 2), np.float32)
    y[::2, 0] = 1
    y[::3, 1] = 1
    img = rng.integers(0, 60, size=(n, 32, 32)).astype(np.uint8)
    img[:, :16] += (y[:, :1] * 150).astype(np.uint8)[:, :, None]
    s = make_store("nih", img, y, np.array(["train"] * n), label_names=["A", "B"])
    s.manifest = pd.DataFrame({"row": np.arange(n), "image_id": [hash_id(x, "cxrbench") for x in NAMES]})
    return s


@pytest.fixture
def files(tmp_path):
    return {"train": write(tmp_path / "train.csv", NAMES[20:] + NAMES[:12]),
            "valid": write(tmp_path / "valid.csv", NAMES[12:16]),
            "test": write(tmp_path / "test.csv", [NAMES[18], NAMES[16], NAMES[17], NAMES[19]])}


def test_split_reader_gives_exactly_the_files_rows(make_store, files):
    assert read_split_file(files["valid"]) == NAMES[12:16]
    rows, report = medklip_rows(store(make_store), files, max_missing=0.0)
    assert rows["train"].tolist() == [20, 21, 22, 23, *range(12)]  # file order
    assert rows["valid"].tolist() == [12, 13, 14, 15]
    assert rows["test"].tolist() == [18, 16, 17, 19]
    assert report["missing"] == {"train": [], "valid": [], "test": []}
    assert report["files"]["test"]["listed"] == 4 and len(report["files"]["test"]["sha256"]) == 64


def test_images_the_store_lacks_are_counted_and_capped(make_store, files, tmp_path):
    extra = write(tmp_path / "test_extra.csv", [NAMES[16], "99999999_000.png"])
    rows, report = medklip_rows(store(make_store), {**files, "test": extra}, max_missing=0.5)
    assert rows["test"].tolist() == [16]
    assert report["missing"]["test"] == [hash_id("99999999_000.png", "cxrbench")]  # hashed, never the raw name
    with pytest.raises(ValueError, match=r"test_extra.csv: 1 of 2 images are not in the prepared store"):
        medklip_rows(store(make_store), {**files, "test": extra}, max_missing=0.0)


@pytest.mark.parametrize("text, match", [
    ("Image Index,Finding Label\nx.png,No Finding\n", r"line 1: header lacks column\(s\) \['img_path'\]"),
    (f"{HEADER}\n{line('a.png')}\n{line('')}\n", r"line 3: column 'Image Index' is empty"),
    (f"{HEADER}\n{line('a.png')}\n\n{line('a.png')}\n", r"line 4: image 'a.png' already on line 2"),
])
def test_bad_split_files_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SplitFileError, match=rf"bad.csv: {match}"):
        read_split_file(path)


def test_missing_or_overlapping_files_are_errors(make_store, files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.csv: no such MedKLIP split file \(parameter .*files.valid"):
        medklip_rows(store(make_store), {**files, "valid": str(tmp_path / "nope.csv")}, 0.0)
    overlap = write(tmp_path / "v2.csv", [NAMES[0]])
    with pytest.raises(SplitFileError, match=r"v2.csv: image '00000001_000.png' is also in .*train.csv"):
        medklip_rows(store(make_store), {**files, "valid": overlap}, 0.0)
    with pytest.raises(ValueError, match=r"\['valid', 'test'\] not set"):
        split_files({"split_files": {"train": files["train"]}})


def test_without_split_files_the_task_says_what_is_public():
    task = TASKS.get("finetune_medklip")({"datasets": ["nih"], "split_files": {"train": None}})
    with pytest.raises(NotApplicable, match=r"not public: .*only its test list .*data_sample/test.csv.*split_files"):
        task.check_method(type("M", (), {"name": "g2d"}))


def test_fractions_are_nested_and_drawn_over_medklip_train(make_store):
    s = store(make_store)
    train = np.arange(24)[::-1]
    p = {"fraction_seed": 0, "min_positives": 1}
    ten, fifty = fraction_rows(s, train, 10, p), fraction_rows(s, train, 50, p)
    assert set(ten) <= set(fifty) <= set(train.tolist()) and len(fifty) == 12
    assert np.array_equal(fraction_rows(s, train, 100, p), np.arange(24))
    assert s.labels(ten)[:, 0].any() and s.labels(ten)[:, 1].any()  # a positive of each label
    assert not np.array_equal(fifty, fraction_rows(s, train, 50, {**p, "fraction_seed": 1}))


def test_run_trains_on_the_medklip_split(make_store, pretrained_factory, files, tmp_path):
    params = {"datasets": ["nih"], "image_size": 32, "crop_ratio": 1.0, "split_files": files,
              "engine": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, "device": "cpu"}}
    task = TASKS.get("finetune_medklip")(params)
    task.check_method(type("M", (), {"name": "g2d"}))
    m = task.run(pretrained_factory(), store(make_store), 100, 0, tmp_path)
    assert task.n == {"train": 16, "valid": 4, "test": 4} and 0 <= m["AUROC"] <= 1
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["sizes"] == {"train": 16, "valid": 4, "test": 4} and split["fraction"] == 100
    assert "00000001" not in (tmp_path / "split.json").read_text()  # no raw image names (they embed patient ids)
