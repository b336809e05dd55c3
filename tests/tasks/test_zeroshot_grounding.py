import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.registry import TASKS
from cxrbench.tasks._base import NotApplicable
from cxrbench.tasks._common import prompt_pair
from cxrbench.tasks.zeroshot import pair_scores

E = torch.eye(4)


class HandVL:
    """Global embedding normalize([top, bottom, 1 - top, 1 - bottom]) of the image (channel 0 mapped back to
    [0, 1]); dense embedding per 4x4 cell: e0 where the cell is bright, e1 elsewhere. Texts from a table."""

    def __init__(self, table):
        self.table = table

    def embed_image(self, x):
        img = x[:, 0] * 0.5 + 0.5
        h = img.shape[1] // 2
        top, bottom = img[:, :h].mean((1, 2)), img[:, h:].mean((1, 2))
        g = F.normalize(torch.stack([top, bottom, 1 - top, 1 - bottom], 1), dim=1)
        bright = (F.avg_pool2d(img[:, None], 4) > 0.6).float()
        dense = torch.cat([bright, 1 - bright, torch.zeros_like(bright), torch.zeros_like(bright)], 1)
        return g, dense

    def embed_text(self, texts):
        return torch.stack([self.table[t] for t in texts])


def zs_store(make_store, n=24, size=32):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
    y[:2] = [[1, 0], [0, 1]]
    img = np.full((n, size, size), 20, np.uint8)
    img[:, : size // 2] += (y[:, 0] * 200).astype(np.uint8)[:, None, None]
    img[:, size // 2 :] += (y[:, 1] * 200).astype(np.uint8)[:, None, None]
    return make_store("chexpert", img, y, np.array(["test"] * n), label_names=["Top", "Bottom_Half"])


def test_prompt_pair():
    assert prompt_pair("Pleural_Thickening") == ("Pleural Thickening", "No Pleural Thickening")


def test_pair_scores_is_softmax_over_the_pair():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    s = pair_scores(img, pos, neg, temperature=0.5)
    exp = torch.tensor([[math.exp(2) / (math.exp(2) + 1)], [math.exp(1.2) / (math.exp(1.2) + math.exp(1.6))]])
    torch.testing.assert_close(s, exp)


def test_zeroshot_known_auroc(make_store, pretrained_factory, tmp_path):
    table = {"Top": E[0], "No Top": E[2], "Bottom Half": E[3], "No Bottom Half": E[1]}  # 2nd pair swapped
    pre = pretrained_factory(vl=HandVL(table))
    task = TASKS.get("zeroshot")({"datasets": ["chexpert"], "image_size": 32, "crop_ratio": 1.0})
    task.check(pre)
    store = zs_store(make_store)
    m = task.run(pre, store, 100, 0, tmp_path)
    assert m["AUROC/Top"] == 1.0 and m["AUROC/Bottom_Half"] == 0.0 and m["AUROC"] == 0.5
    assert m["F1/Top"] == 1.0 and "threshold/Top" in m
    # Top positives with a dark bottom have the larger norm ||(t, b, 1-t, 1-b)|| (1.273 vs 1.236), so the lowest
    # positive score: they sit exactly at the max-F1 threshold, and the reference rule (score > t) calls them negative
    y = store._labels
    assert m["ACC/Top"] == pytest.approx(1 - float(np.mean((y[:, 0] == 1) & (y[:, 1] == 0))))
    assert task.n == {"train": 0, "valid": 0, "test": 24}


@pytest.mark.parametrize("task", ["zeroshot", "grounding"])
def test_not_applicable_without_text(task, pretrained_factory):
    with pytest.raises(NotApplicable, match="text tower"):
        TASKS.get(task)({"datasets": ["rsna"]}).check(pretrained_factory(method="raddino"))


def grounding_store(make_store, n=12, size=32, masks=True):
    img = np.full((n, size, size), 20, np.uint8)
    m = np.zeros((n, size, size), np.uint8)
    boxes = []
    for i in range(n):
        y0, x0 = 4 * (i % 4), 4 * (i % 3)
        if i % 4 != 3:  # every 4th image is a negative (excluded: positives only)
            img[i, y0 : y0 + 12, x0 : x0 + 16] = 230
            m[i, y0 : y0 + 12, x0 : x0 + 16] = 1
            boxes.append(np.array([[x0, y0, x0 + 16, y0 + 12]], np.float32))
        else:
            boxes.append(np.zeros((0, 4), np.float32))
    labels = m.reshape(n, -1).max(1, keepdims=True).astype(np.float32)
    return make_store(
        "rsna", img, labels, np.array(["test"] * n), label_names=["Pneumonia"], masks=m if masks else None, boxes=boxes
    )


@pytest.mark.parametrize("masks", [True, False])
def test_grounding_peak_inside_box(masks, make_store, pretrained_factory, tmp_path):
    pre = pretrained_factory(vl=HandVL({"Pneumonia": E[0]}))
    task = TASKS.get("grounding")({"datasets": ["rsna"], "image_size": 32, "threshold": 0.5})
    m = task.run(pre, grounding_store(make_store, masks=masks), 100, 0, tmp_path)
    assert m["PointingGame"] == 1.0 and m["IoU"] > 0.6 and m["Dice"] > 0.75
    assert task.n["test"] == 9
    ex = np.load(tmp_path / "examples.npz")
    assert ex["sim"].shape == (4, 32, 32) and ex["mask"].dtype == bool


def test_grounding_ms_cxr_uses_row_text(make_store, pretrained_factory, tmp_path):
    store = grounding_store(make_store)
    store.name = "ms_cxr"
    store._texts = ["left lower lobe opacity"] * 12
    pre = pretrained_factory(vl=HandVL({"left lower lobe opacity": E[1]}))  # text matches the background
    m = TASKS.get("grounding")({"datasets": ["ms_cxr"], "image_size": 32}).run(pre, store, 100, 0, tmp_path)
    assert m["PointingGame"] == 0.0
