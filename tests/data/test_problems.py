"""The problem registry: documented, shown with file and row, recorded without raw ids."""

from __future__ import annotations

from pathlib import Path

from cxrbench.data.problems import EFFECTS, KINDS, Problems, format_table, hash_id

README = Path(__file__).resolve().parents[2] / "data" / "README.md"


def test_every_kind_is_documented_with_a_known_effect():
    text = README.read_text()
    for kind, (effect, description) in KINDS.items():
        assert f"`{kind}`" in text, f"data/README.md does not document {kind!r}"
        assert effect in EFFECTS and description


def test_console_names_file_row_column_and_meta_hashes_the_id(tmp_path):
    probs = Problems(tmp_path)
    p = probs.add("bad_label", "value '2'; expected one of [0.0, 1.0] or blank", table=tmp_path / "labels.csv",
                  line=7, column="Target", image="patient-42")
    q = probs.add("missing_file", "image file not found", path="files/p10/p10000032/a.jpg", table="meta.csv",
                  line=3, image="a")
    assert p.console() == ("labels.csv: line 7: column 'Target': image patient-42: value '2'; expected one of "
                           "[0.0, 1.0] or blank")
    assert q.console() == "files/p10/p10000032/a.jpg (meta.csv: line 3): image file not found"
    record = p.record("salt")
    assert record["image"] == hash_id("patient-42", "salt") != hash_id("patient-42", "other")
    assert "patient-42" not in str(record) and "p10000032" not in str(q.record("salt"))
    table = format_table(probs.items).splitlines()
    assert table[1].split()[:3] == ["bad_label", "image", "1"] and "line 7" in table[2]
    assert probs.counts() == {"bad_label": 1, "missing_file": 1} and probs.images() == {"patient-42", "a"}
