import io

import numpy as np
import pandas as pd
import pytest

from cxrbench.report import figures


def _png_bytes(fig) -> int:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    plt.close(fig)
    return len(buf.getvalue())


@pytest.fixture
def summary():
    rows = []
    for m in ("convirt", "g2d"):
        for f in (1, 10, 100):
            rows.append({"task": "linear", "dataset": "rsna", "metric": "AUROC", "fraction": f, "method": m,
                         "mean": 0.6 + f / 1000, "low": 0.55, "high": 0.7, "n": 1, "sd": np.nan})
            for d in ("Edema", "Atelectasis"):
                rows.append({"task": "linear", "dataset": "chexpert", "metric": f"AUROC/{d}", "fraction": f,
                             "method": m, "mean": 0.7, "low": 0.6, "high": 0.8, "n": 1, "sd": np.nan})
    return pd.DataFrame(rows)


def test_curves_and_heatmap_draw(summary):
    assert _png_bytes(figures.data_efficiency(summary, {("linear", "rsna"): "AUROC"})) > 2000
    assert _png_bytes(figures.auroc_heatmap(summary)) > 2000
    curves = pd.DataFrame({"step": [0, 1, 2], "g2d": [3.0, 2.0, 1.5], "convirt": [2.0, np.nan, 1.0]})
    assert _png_bytes(figures.pretrain_loss(curves)) > 2000


def test_example_figures_draw():
    rng = np.random.default_rng(0)
    img = rng.random((2, 16, 16))
    mask = img > 0.7
    assert _png_bytes(figures.pseudo_mask_gallery({"g2d": {"image": img, "attention": img[:, ::4, ::4],
                                                           "pseudo_mask": mask, "prediction": img}})) > 2000
    assert _png_bytes(figures.segmentation_examples({"g2d siim 100%": {"image": img, "mask": mask,
                                                                        "prob": img}})) > 2000
    assert _png_bytes(figures.grounding_overlays({"g2d rsna": {"image": img, "mask": mask, "sim": img}})) > 2000
    pred = np.array([[[2, 2, 8, 8, 0.9], [np.nan] * 5], [[1, 1, 5, 5, 0.7], [3, 3, 9, 9, 0.6]]])
    gt = np.array([[[2, 3, 8, 9]], [[np.nan] * 4]])
    assert _png_bytes(figures.detection_examples({"g2d rsna": {"image": img, "pred": pred, "gt": gt}})) > 2000


def test_empty_inputs_give_a_figure_that_says_so():
    empty = pd.DataFrame(columns=["task", "dataset", "metric", "fraction", "method", "mean", "low", "high"])
    for fig in (figures.data_efficiency(empty, {}), figures.auroc_heatmap(empty), figures.pseudo_mask_gallery({}),
                figures.segmentation_examples({}), figures.grounding_overlays({}), figures.detection_examples({}),
                figures.pretrain_loss(pd.DataFrame({"step": []}))):
        text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        assert text.startswith("no ") and _png_bytes(fig) > 500
