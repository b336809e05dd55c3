import copy
import json

import pandas as pd
import pytest

from cxrbench import matrix
from cxrbench.report import build_report, collect, primary_metric, summarize
from cxrbench.report.published import load_published, published_for


@pytest.fixture
def small(params):
    p = copy.deepcopy(params)
    p["matrix"] = {"methods": ["convirt", "raddino"], "tasks": ["linear", "zeroshot"], "fractions": [1, 100],
                   "seeds": [0, 1, 2]}
    p["evaluate"]["tasks"]["linear"]["datasets"] = ["chexpert"]
    p["evaluate"]["tasks"]["zeroshot"]["datasets"] = ["rsna"]
    return p


def _write_runs(p, runs_dir):
    for run in matrix.runs(p):
        path = runs_dir / run.method / run.task / run.dataset / f"f{run.fraction}" / f"s{run.seed}" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if run.task == "zeroshot" and run.method == "raddino":
            result = {"status": "not_applicable", "reason": "no text tower", "metrics": {}}
        else:
            value = 0.5 + 0.001 * run.fraction + 0.01 * run.seed
            result = {"status": "ok", "metrics": {"AUROC": value, "AUROC/Edema": 0.9}}
        path.write_text(json.dumps(result))


def test_published_lookup_matches_the_paper_rows():
    pub = load_published()
    assert published_for(pub, "convirt", "linear", "chexpert", "AUROC", 1)["published"] == "85.9"
    assert published_for(pub, "g2d", "segmentation", "siim", "Dice@reference", 100)["published"] == "66.8"
    assert published_for(pub, "g2d", "segmentation_ed", "siim", "Dice@reference", 1)["published"] == "65.6"
    assert published_for(pub, "raddino", "linear", "chexpert", "AUROC", 1)["published"] == "not yet entered"
    assert published_for(pub, "convirt", "linear", "chexpert", "AUROC@strict", 1)["published"] == "not reported"
    assert "G2D NeurIPS 2024" in published_for(pub, "g2d", "linear", "rsna", "AUROC", 10)["source"]


def test_summary_over_seeds(small, tmp_path):
    _write_runs(small, tmp_path)
    long = collect(small, tmp_path)
    summ = summarize(long)
    row = summ[(summ.method == "convirt") & (summ.task == "linear") & (summ.fraction == 1)].iloc[0]
    # values 0.501, 0.511, 0.521 -> mean 0.511, sd 0.01
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(0.511)
    assert row["sd"] == pytest.approx(0.01)
    assert "AUROC/Edema" not in set(summ.metric)


def test_report_files_and_values(small, tmp_path):
    _write_runs(small, tmp_path / "runs")
    files = build_report(small, tmp_path / "runs", tmp_path / "report")
    assert {f.name for f in files} >= {"table.csv", "table.md", "summary.json", "figure.png", "runs.csv"}
    tab = pd.read_csv(tmp_path / "report" / "table.csv")
    cell = tab[(tab.method == "convirt") & (tab.task == "linear") & (tab.fraction_pct == 100)].iloc[0]
    assert cell["reproduced"] == pytest.approx(61.0)  # mean of 0.6, 0.61, 0.62
    assert float(cell["published"]) == pytest.approx(87.3)
    assert cell["difference"] == pytest.approx(61.0 - 87.3)
    na = tab[(tab.method == "raddino") & (tab.task == "zeroshot")].iloc[0]
    assert "not applicable: no text tower" in na["source"]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["linear"]["chexpert"]["convirt"]["f1"] == pytest.approx(0.511)
    assert (tmp_path / "report" / "figure.png").stat().st_size > 1000
    md = (tmp_path / "report" / "table.md").read_text()
    assert "## linear" in md and "nan" not in md


def test_missing_run_is_a_clear_error(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        collect(small, tmp_path)


def test_primary_metrics():
    assert primary_metric("linear", "covidx") == "ACC"
    assert primary_metric("segmentation", "siim") == "Dice@reference"
