import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from cxrbench import matrix
from cxrbench.metrics.classification import auroc
from cxrbench.metrics.detection import map_reference, map_strict
from cxrbench.metrics.grounding import map_iou_dice, pointing_game
from cxrbench.metrics.segmentation import dice_reference, dice_strict
from cxrbench.report import build_report, collect, primary_metric, resample, runs, summarize, tables
from cxrbench.report.published import load_published, published_for, published_rows
from cxrbench.tasks import _predictions


@pytest.fixture
def small(params):
    p = copy.deepcopy(params)
    p["matrix"] = {"methods": ["convirt", "raddino"], "tasks": ["linear", "zeroshot"], "fractions": [1, 100],
                   "seeds": [0, 1, 2]}
    p["evaluate"]["tasks"]["linear"]["datasets"] = ["chexpert"]
    p["evaluate"]["tasks"]["zeroshot"]["datasets"] = ["rsna"]
    p["report"]["bootstrap"] = {"resamples": 50, "seed": 0}
    return p


def _write_runs(p, runs_dir, predictions=False):
    for run in matrix.runs(p):
        d = runs_dir / run.method / run.task / run.dataset / f"f{run.fraction}" / f"s{run.seed}"
        d.mkdir(parents=True, exist_ok=True)
        if run.task == "zeroshot" and run.method == "raddino":
            result = {"status": "not_applicable", "reason": "no text tower", "metrics": {}}
        else:
            value = 0.5 + 0.001 * run.fraction + 0.01 * run.seed
            result = {"status": "ok", "metrics": {"AUROC": value, "AUROC/Edema": 0.9}}
        (d / "metrics.json").write_text(json.dumps(result))
        if predictions and result["status"] == "ok":
            rng = np.random.default_rng(run.seed)
            y = rng.integers(0, 2, (60, 1))
            _predictions.classification(d, np.arange(60), y, scores=0.4 * y + 0.6 * rng.random((60, 1)),
                                        labels=["Edema"])


def _table(md: str) -> pd.DataFrame:
    """The Markdown table of a report file back into cells (pipes inside cells are escaped)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip().replace("\\|", "|") for c in ln.replace("\\|", "\0").split("|")[1:-1]] for ln in lines]
    split = [[c.replace("\0", "|") for c in row] for row in split]
    return pd.DataFrame(split[2:], columns=split[0]).set_index("method")


def test_published_lookup_matches_the_paper_rows():
    pub = load_published()
    assert published_for(pub, "convirt", "linear", "chexpert", "AUROC", 1)["published"] == "85.9"
    assert published_for(pub, "g2d", "segmentation", "siim", "Dice@reference", 100)["published"] == "66.8"
    assert published_for(pub, "raddino", "linear", "chexpert", "AUROC", 1)["published"] == "not yet entered"
    assert published_rows({"g2d_mine": "ablation: heads 1"})["g2d_mine"] == "ablation: heads 1"
    assert published_rows()["g2d_median"] == "ablation: threshold: median"


def test_summary_over_seeds(small, tmp_path):
    _write_runs(small, tmp_path)
    summ = summarize(collect(small, tmp_path))
    row = summ[(summ.method == "convirt") & (summ.task == "linear") & (summ.fraction == 1)
               & (summ.metric == "AUROC")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.511) and row["sd"] == pytest.approx(0.01)
    assert row["interval"] == "seeds" and row["low"] == pytest.approx(row["ci95_low"])


def test_paper_table_cells_land_in_their_row_and_column(small, tmp_path):
    _write_runs(small, tmp_path)
    long = collect(small, tmp_path)
    summ = summarize(long)
    spec = next(t for t in tables.TABLES if t.name == "g2d_table4")
    tab, _ = tables.paper_table(spec, load_published(), summ, long, published_rows(), ["convirt", "raddino"])
    tab = tab.set_index("method")
    # ConVIRT CheXpert 1%: published 85.9; reproduced 0.501, 0.511, 0.521 -> 51.1 ± 1.0 with the t interval
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert tab.loc["ConVIRT", "CheXpert AUROC 1%"] == f"85.9 | 51.1 ± 1.0 [{51.1 - half:.1f}, {51.1 + half:.1f}]"
    assert tab.loc["ConVIRT", "CheXpert AUROC 10%"] == "86.8 |"  # 10% not run: blank, not a number
    assert tab.loc["ConVIRT", "RSNA AUROC 1%"] == "77.4 |"  # RSNA not in this matrix
    assert tab.loc["GLoRIA", "CheXpert AUROC 100%"] == "88.1 |"  # a method the matrix does not run keeps its row
    assert tab.loc["RAD-DINO", "CheXpert AUROC 100%"].startswith("not yet entered | 61.0 ± 1.0")
    assert list(tab.index)[-1] == "RAD-DINO"  # reproduced-only rows come after the paper's rows


def test_zero_shot_table_marks_not_applicable(small, tmp_path):
    _write_runs(small, tmp_path)
    long = collect(small, tmp_path)
    spec = next(t for t in tables.TABLES if t.name == "g2d_table2b")
    tab, notes = tables.paper_table(spec, load_published(), summarize(long), long, published_rows(),
                                    ["convirt", "raddino"])
    tab = tab.set_index("method")
    assert tab.loc["ConVIRT", "RSNA AUROC"].startswith("80.4 | 60.0")  # zero-shot: no fraction in the paper
    assert tab.loc["RAD-DINO", "RSNA AUROC"] == "not yet entered | n/a"
    assert any("no text tower" in n for n in notes)


def test_table1_g2d_rows_follow_the_setting(params, tmp_path):
    p = copy.deepcopy(params)
    p["matrix"] = {"methods": ["g2d"], "tasks": ["segmentation", "segmentation_ed", "detection"],
                   "fractions": [1], "seeds": [0]}
    for t in p["matrix"]["tasks"]:
        p["evaluate"]["tasks"][t]["datasets"] = ["siim"] if t.startswith("segm") else ["rsna"]
        p["evaluate"]["tasks"][t].pop("fractions", None)
    for run in matrix.runs(p):
        d = tmp_path / run.method / run.task / run.dataset / "f1" / "s0"
        d.mkdir(parents=True)
        value = {"segmentation": 0.3, "segmentation_ed": 0.4, "detection": 0.2}[run.task]
        key = "mAP@reference" if run.task == "detection" else "Dice@reference"
        (d / "metrics.json").write_text(json.dumps({"status": "ok", "metrics": {key: value}}))
    long = collect(p, tmp_path)
    tab, _ = tables.paper_table(tables.TABLES[0], load_published(), summarize(long), long, published_rows(), ["g2d"])
    tab = tab.set_index("method")
    assert tab.loc["G2D (encoder)", "segmentation SIIM Dice 1%"] == "62.6 | 30.0"
    assert tab.loc["G2D (encoder-decoder)", "segmentation SIIM Dice 1%"] == "65.6 | 40.0"
    assert tab.loc["G2D (encoder)", "detection RSNA mAP 1%"] == "15.9 | 20.0"
    assert "G2D" not in tab.index


def test_table5_ablation_rows_from_derived_methods(params):
    summ = pd.DataFrame([
        {"task": "segmentation", "dataset": "siim", "metric": "Dice@reference", "fraction": 1, "method": m,
         "mean": v, "sd": math.nan, "n": 1, "low": math.nan, "high": math.nan}
        for m, v in (("g2d", 0.6), ("g2d_median", 0.5), ("convirt", 0.1))])
    long = pd.DataFrame(columns=["method", "task", "status", "reason"])
    spec = next(t for t in tables.TABLES if t.name == "g2d_table5")
    rows = published_rows({"g2d_median": "ablation: threshold: median"})
    tab, _ = tables.paper_table(spec, load_published(), summ, long, rows, ["g2d", "g2d_median", "convirt"])
    tab = tab.set_index("method")
    assert tab.loc["threshold: median", "segmentation SIIM Dice 1%"] == "58.8 | 50.0"
    assert tab.loc["decoder loss: pseudo seg", "segmentation SIIM Dice 1%"] == "65.6 | 60.0"
    assert "ConVIRT" not in tab.index and "threshold: GMM" in tab.index


def test_demo_scale_says_so_and_drops_the_difference(small, tmp_path):
    _write_runs(small, tmp_path / "runs", predictions=True)
    small["paths"]["report"] = str(tmp_path / "report")
    for scale in ("demo", "paper"):
        small["scale"] = scale
        out = tmp_path / scale
        build_report(small, tmp_path / "runs", out, with_figures=False)
        md = (out / "tables" / "g2d_table4.md").read_text()
        card = pd.read_csv(out / "tables" / "scorecard.csv", comment="#")
        if scale == "demo":
            assert md.splitlines()[2] == f"- **{tables.DEMO_WARNING}**"
            assert "difference" not in card.columns
        else:
            assert tables.DEMO_WARNING not in md
            row = card[(card.row == "ConVIRT") & (card.column == "CheXpert AUROC 100%")].iloc[0]
            assert row["difference"] == pytest.approx(61.0 - 87.3) and not row["inside"]
        assert f"Seeds: {small['matrix']['seeds']}" in md and "Split protocol" in md


def test_report_writes_every_listed_file(small, tmp_path):
    _write_runs(small, tmp_path / "runs", predictions=True)
    small["paths"]["report"] = "results/report"
    files = build_report(small, tmp_path / "runs", tmp_path / "report", workers=2)  # figures in a spawned process
    listed = {str(tmp_path / "report" / v.removeprefix("results/report/"))
              for v in matrix.report_files(small).values()}
    assert {str(f) for f in files} == listed
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    long = pd.read_csv(tmp_path / "report" / "runs.csv")
    ok = long[(long.metric == "AUROC") & long.boot_low.notna()]
    assert len(ok) and (ok.boot_low <= ok.boot_high).all()
    comp = pd.read_csv(tmp_path / "report" / "tables" / "comparisons.csv", comment="#")
    # the fixture gives both methods the same predictions per seed: no difference
    assert set(comp.method) == {"raddino"} and set(comp.baseline) == {"convirt"}
    assert (comp.effect == 0).all()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["linear"]["chexpert"]["convirt"]["f1"] == pytest.approx(0.511)
    metrics = json.loads((tmp_path / "report" / "metrics" / "g2d_table4.json").read_text())
    assert metrics["ConVIRT"]["CheXpert AUROC 1%"] == pytest.approx(0.511)
    tex = (tmp_path / "report" / "tables" / "g2d_table4.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "85.9 \\textbar{}" in tex


def test_missing_run_is_a_clear_error(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        collect(small, tmp_path)


def test_primary_metrics():
    assert primary_metric("linear", "covidx") == "ACC"
    assert primary_metric("segmentation", "siim") == "Dice@reference"


# ------------------------------------------------------ predictions -> the task's own metric on the full set


def test_resampled_metrics_equal_the_task_metrics_on_the_full_set(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (50, 3))
    s = rng.random((50, 3)) * 0.7 + 0.3 * y
    _predictions.classification(tmp_path / "c", np.arange(50), y, scores=s, labels=["a", "b", "c"])
    st = resample.statistics(_predictions.load_predictions(tmp_path / "c"), ["a", "b", "c"])
    ref = auroc(y, s, ["a", "b", "c"])
    for key in ("AUROC", "AUROC/a", "AUROC/c"):
        values, targets, fn = st[key]
        assert fn(values, targets) == pytest.approx(ref[key])

    gt = rng.random((21, 8, 8)) > 0.85
    gt[:5] = False
    prob = np.clip(gt * 0.5 + rng.random((21, 8, 8)) * 0.6, 0, 1)
    _predictions.segmentation(tmp_path / "s", np.arange(21), prob, gt, batch_size=4)
    st = resample.statistics(_predictions.load_predictions(tmp_path / "s"))
    expect = {"Dice@reference": dice_reference(prob, gt, batch_size=4),
              "Dice@strict": dice_strict(prob, gt, mode="image"),
              "Dice@strict_global": dice_strict(prob, gt, mode="global")}
    for key, value in expect.items():
        v, t, fn = st[key]
        assert fn(v, t) == pytest.approx(value)
        idx = np.arange(21)[None]  # the identity resample gives the same value on the vectorised path
        assert fn.resampled(v, t, idx)[0] == pytest.approx(value)


def test_detection_and_grounding_predictions_reproduce_the_metrics(tmp_path):
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for i in range(25):
        g = rng.random((i % 3, 2)) * 40
        g = np.c_[g, g + 15]
        b = np.r_[g + rng.normal(0, 2, g.shape), np.c_[rng.random((1, 2)) * 40, rng.random((1, 2)) * 40 + 15]]
        gts.append(g)
        preds.append({"boxes": b, "scores": np.round(rng.random(len(b)) * 0.6 + 0.4, 2)})
    _predictions.detection(tmp_path / "d", np.arange(25), preds, gts, max_dets=10)
    st = resample.statistics(_predictions.load_predictions(tmp_path / "d"))
    for key, fn_ref in (("mAP@reference", map_reference), ("mAP@strict", map_strict)):
        v, t, fn = st[key]
        want = fn_ref(preds, gts, max_dets=10)["mAP"]
        assert fn(v, t) == pytest.approx(want)
        assert fn.resampled(v, t, np.arange(25)[None])[0] == pytest.approx(want)

    gt = rng.random((6, 16, 16)) > 0.7
    sim = rng.random((6, 16, 16))
    _predictions.grounding(tmp_path / "g", np.arange(6), sim[:, ::4, ::4], sim, gt, threshold=0.5)
    st = resample.statistics(_predictions.load_predictions(tmp_path / "g"))
    assert st["PointingGame"][2](*st["PointingGame"][:2]) == pytest.approx(pointing_game(sim[:, ::4, ::4], gt))
    assert st["IoU"][2](*st["IoU"][:2]) == pytest.approx(map_iou_dice(sim, gt, threshold=0.5)["IoU"])


def test_comparisons_skip_different_test_sets(tmp_path):
    a = {"kind": "classification", "row": np.arange(4), "targets": np.array([[0], [1], [0], [1]]),
         "scores": np.array([[0.1], [0.9], [0.2], [0.8]])}
    b = {**a, "row": np.arange(1, 5)}
    run = matrix.Run
    preds = {run("x", "linear", "rsna", 1, 0): (a, []), run("y", "linear", "rsna", 1, 0): (b, [])}
    assert runs.comparisons(preds, ["x", "y"], resamples=10, seed=0).empty


def test_mflag_table_shows_the_mflag_run_on_every_source_row():
    summ = pd.DataFrame([{"task": "segmentation", "dataset": "siim", "metric": "Dice@reference", "fraction": 100,
                          "method": "mflag", "mean": 0.5, "sd": math.nan, "n": 1, "low": 0.4, "high": 0.6}])
    long = pd.DataFrame(columns=["method", "task", "status", "reason"])
    spec = next(t for t in tables.TABLES if t.name == "mflag_published")
    tab, _ = tables.paper_table(spec, load_published(), summ, long, published_rows(), ["mflag"])
    tab = tab.set_index("method")
    assert tab.loc["M-FLAG (G2D Table 1)", "segmentation SIIM Dice 100%"] == "64.8 | 50.0 [40.0, 60.0]"
    assert tab.loc["M-FLAG (benchmark aggregator)", "segmentation SIIM Dice 100%"] == "64.8 | 50.0 [40.0, 60.0]"
    assert "M-FLAG" not in tab.index
    card = tables.scorecard(spec, load_published(), summ, published_rows(), demo=False)
    assert len(card) == 2 and card["inside"].eq(False).all()


def test_a_per_label_interval_is_its_own_columns_whatever_the_names_sort_order(tmp_path):
    """Columns [Zeta, Alpha]: Zeta perfectly separated (AUROC 1 on every resample), Alpha pure noise. metrics.json
    sorts its keys (Alpha first), so names taken from it paired Zeta with Alpha's interval."""
    from cxrbench.report import runs as report_runs

    rng = np.random.default_rng(3)
    y = np.stack([np.arange(80) % 2, rng.integers(0, 2, 80)], 1)
    scores = np.stack([0.2 + 0.6 * y[:, 0], rng.random(80)], 1)
    _predictions.classification(tmp_path, np.arange(80), y, scores=scores, labels=["Zeta", "Alpha"])
    pred = _predictions.load_predictions(tmp_path)
    assert report_runs.label_names(pred) == ["Zeta", "Alpha"]
    run = matrix.Run("m", "linear", "d", 100, 0)
    boot = report_runs.bootstrap({run: (pred, report_runs.label_names(pred))}, resamples=50, seed=0)
    rows = boot.set_index("metric")
    assert rows.loc["AUROC/Zeta", "boot_low"] == 1.0 and rows.loc["AUROC/Zeta", "boot_high"] == 1.0
    assert rows.loc["AUROC/Alpha", "boot_low"] < 0.5 < rows.loc["AUROC/Alpha", "boot_high"] < 1.0
    del pred["labels"]  # written before the names were stored: no per-label interval rather than a wrong one
    assert report_runs.label_names(pred) == []
    with pytest.raises(ValueError, match="2 label names for 3"):
        _predictions.classification(tmp_path, np.arange(4), np.zeros((4, 3)), scores=np.zeros((4, 3)),
                                    labels=["a", "b"])


def test_every_nih_label_lands_in_a_published_table_3_column():
    """Table 3's per-disease columns come from metrics.json's AUROC/<label> keys; NIH spells Pleural_Thickening,
    the paper 'Pleural Thickening' (the column stayed empty before the names were mapped)."""
    from cxrbench.data.formats.nih import LABELS

    published = load_published()
    columns = set(published[published["table"] == "Table 3"]["metric"])
    assert {tables._published_metric(f"AUROC/{name}") for name in LABELS} == columns - {"AUROC"}
