"""Issue 15 item 6: a user's CSV of RAD-DINO's published values (report.published_extra) fills the cells that said
"not yet entered" (docs/published_values.md)."""

from __future__ import annotations

import copy
import json

import pytest

from cxrbench import config, matrix
from cxrbench.report import collect, summarize, tables
from cxrbench.report.published import COLUMNS, load_published, published_rows

USER_CSV = (",".join(COLUMNS) + "\n"
            "Table 4,linear classification,CheXpert,AUROC,RAD-DINO,100,72.3,RAD-DINO paper (entered by a user)\n")


@pytest.fixture
def small(params):
    p = copy.deepcopy(params)
    p["matrix"] = {"methods": ["convirt", "raddino"], "tasks": ["linear"], "fractions": [1, 100], "seeds": [0]}
    p["evaluate"]["tasks"]["linear"]["datasets"] = ["chexpert"]
    return p


def _runs(p, root):
    for run in matrix.runs(p):
        d = root / run.method / run.task / run.dataset / f"f{run.fraction}" / f"s{run.seed}"
        d.mkdir(parents=True)
        value = 0.6 if run.method == "raddino" else 0.5
        (d / "metrics.json").write_text(json.dumps({"status": "ok", "metrics": {"AUROC": value}}))


def _table(p, root, extra):
    long = collect(p, root)
    spec = next(t for t in tables.TABLES if t.name == "g2d_table4")
    tab, _ = tables.paper_table(spec, load_published(extra), summarize(long), long, published_rows(),
                                p["matrix"]["methods"])
    return tab.set_index("method")


def test_a_user_csv_row_lands_in_its_cell(small, tmp_path):
    _runs(small, tmp_path / "runs")
    before = _table(small, tmp_path / "runs", [])
    assert before.loc["RAD-DINO", "CheXpert AUROC 100%"] == "not yet entered | 60.0"
    (tmp_path / "raddino.csv").write_text(USER_CSV)
    after = _table(small, tmp_path / "runs", [tmp_path / "raddino.csv"])
    assert after.loc["RAD-DINO", "CheXpert AUROC 100%"] == "72.3 | 60.0"
    assert after.loc["RAD-DINO", "CheXpert AUROC 1%"] == "| 60.0"  # a value the user did not enter stays blank
    assert after.loc["ConVIRT", "CheXpert AUROC 100%"] == "87.3 | 50.0"  # the paper's own rows are untouched


def test_published_extra_is_a_valid_parameter_and_bad_csvs_say_what(params, tmp_path):
    config.validate_params({**params, "report": {**params["report"], "published_extra": ["my/raddino.csv"]}})
    with pytest.raises(FileNotFoundError, match="published_extra"):
        load_published([tmp_path / "nope.csv"])
    (tmp_path / "bad.csv").write_text("table,method,value\nTable 4,RAD-DINO,72.3\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['task'"):
        load_published([tmp_path / "bad.csv"])
