"""The generator's process pool (``workers``) and its test-list sizes (``test_sizes``, issue 10)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cxrbench.data.synthetic import generate

SIZES = {"mimic": 12, "chexpert": 24, "nih": 20, "rsna": 30, "siim": 30, "covidx": 16, "object_cxr": 20, "ms_cxr": 4}


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_workers_write_the_same_files_as_one(tmp_path):
    kw = {"seed": 3, "sizes": SIZES, "image_size": 48, "duplicates": 1, "datasets": ["mimic", "rsna", "siim", "covidx"]}
    one = generate(tmp_path / "one", workers=1, **kw)
    two = generate(tmp_path / "two", workers=2, **kw)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert list(one["datasets"]) == list(two["datasets"]) and one["duplicates"] == two["duplicates"] == {
        "rsna": 1, "siim": 1}


def test_test_sizes_set_the_official_test_lists(tmp_path):
    got = generate(tmp_path, sizes=SIZES, image_size=48, datasets=["chexpert", "nih", "covidx", "object_cxr"],
                   test_sizes={"chexpert": 11, "nih": 6, "covidx": 7, "object_cxr": 13})
    d = got["datasets"]
    assert 11 <= d["chexpert"]["valid"] <= 11 + 3 * 2 and d["chexpert"]["train"] + d["chexpert"]["valid"] >= 24
    assert d["covidx"]["test"] == 7 and d["covidx"]["train"] == 9
    assert d["object_cxr"]["dev"] == 13 and d["object_cxr"]["train"] == 7
    # whole patients: the test list reaches 6 images and stops growing at the patient that crossed it
    assert 6 <= d["nih"]["test"] <= 6 + 3
    listed = (tmp_path / "nih" / "test_list.txt").read_text().split()
    assert len(listed) == d["nih"]["test"]


@pytest.mark.parametrize("bad", [{"rsna": 5}, {"covidx": 16}])
def test_bad_test_sizes_are_refused_with_the_key(tmp_path, bad):
    with pytest.raises(ValueError, match="synthetic.test_sizes"):
        generate(tmp_path, sizes=SIZES, image_size=48, datasets=["covidx"], test_sizes=bad)
