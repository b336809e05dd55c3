"""G2D Table 7 from hand-written metrics files: segmentation_ft cells land in "segmentation (encoder updated)",
finetune_medklip's not-applicable runs show n/a with the reason, and neither leaks into Table 1; the segmentation
examples figure shows ground-truth positives first."""

import copy
import json

import numpy as np

from cxrbench import matrix
from cxrbench.report import collect, figures, summarize, tables
from cxrbench.report.published import load_published, published_rows
from cxrbench.tasks.finetune_medklip import NOT_PUBLIC

SPEC = {t.table: t for t in tables.TABLES}


def _write(p, runs_dir):
    for run in matrix.runs(p):
        d = runs_dir / run.method / run.task / run.dataset / f"f{run.fraction}" / f"s{run.seed}"
        d.mkdir(parents=True)
        if run.task == "finetune_medklip":
            result = {"status": "not_applicable", "reason": NOT_PUBLIC, "metrics": {}}
        else:
            result = {"status": "ok", "metrics": {"Dice@reference": 0.5 + 0.001 * run.fraction}}
        (d / "metrics.json").write_text(json.dumps(result))


def _matrix(params):
    p = copy.deepcopy(params)
    p["matrix"] = {"methods": ["g2d", "convirt"], "tasks": ["segmentation_ft", "finetune_medklip"],
                   "fractions": [1, 100], "seeds": [0]}
    tasks = p["evaluate"]["tasks"]
    tasks["segmentation_ft"] = {**tasks.get("segmentation_ft", {}), "datasets": ["siim"]}
    tasks["finetune_medklip"] = {**tasks.get("finetune_medklip", {}), "datasets": ["nih"]}
    for t in ("segmentation_ft", "finetune_medklip"):
        tasks[t].pop("fractions", None)
    return p


def test_table7_cells_and_not_applicable_reason(params, tmp_path):
    p = _matrix(params)
    _write(p, tmp_path)
    long = collect(p, tmp_path)
    summ = summarize(long)
    tab, notes = tables.paper_table(SPEC["Table 7"], load_published(), summ, long, published_rows(), ["g2d", "convirt"])
    tab = tab.set_index("method")
    assert tab.loc["G2D", "segmentation (encoder updated) SIIM Dice 1%"] == "70.6 | 50.1"
    assert tab.loc["G2D", "segmentation (encoder updated) SIIM Dice 100%"] == "82.3 | 60.0"
    assert tab.loc["G2D", "segmentation (encoder updated) RSNA Dice 1%"] == "73.8 |"  # RSNA not run: blank
    assert tab.loc["G2D", "fine-tuned classification (MedKLIP split) ChestX-ray14 AUROC 1%"] == "80.4 | n/a"
    assert tab.loc["MedKLIP", "segmentation (encoder updated) SIIM Dice 1%"] == "66.6 |"
    assert tab.loc["ConVIRT", "segmentation (encoder updated) SIIM Dice 1%"] == "not published | 50.1"
    assert any("G2D, fine-tuned classification (MedKLIP split): n/a, MedKLIP's" in n for n in notes)
    assert any("not public" in n for n in SPEC["Table 7"].notes)
    table1, _ = tables.paper_table(SPEC["Table 1"], load_published(), summ, long, published_rows(), ["g2d"])
    assert not table1.drop(columns="method").apply(lambda c: c.str.contains("50.1|60.0")).any().any()


def test_segmentation_examples_pick_positives_first():
    masks = np.zeros((5, 8, 8), bool)
    masks[2, 2:5, 2:5] = masks[4, 1:3, 1:3] = True
    assert figures.positives_first(masks, 3) == [2, 4, 0]
    assert figures.positives_first(np.zeros((2, 8, 8)), 3) == [0, 1]
    img = np.random.default_rng(0).random((5, 8, 8))
    fig = figures.segmentation_examples({"g2d siim 100%": {"image": img, "mask": masks, "prob": img}}, k=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["#2 image + GT", "#2 prediction", "#4 image + GT", "#4 prediction"]
