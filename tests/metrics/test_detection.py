import contextlib
import io
import math

import numpy as np
import pytest
import torch

from cxrbench.metrics.detection import IOU_THRESHOLDS, average_precision, box_iou, map_reference, map_strict

THR = list(IOU_THRESHOLDS)


def _coco_aps(preds, gts, thrs=THR):
    """Per-threshold AP from pycocotools COCOeval (area all, maxDets 100, 101-point interpolation)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, dets = [], []
    for i, g in enumerate(gts):
        for x1, y1, x2, y2 in np.asarray(g, dtype=float).reshape(-1, 4):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": 0})
    for i, p in enumerate(preds):
        for (x1, y1, x2, y2), s in zip(np.asarray(p["boxes"]).reshape(-1, 4), np.asarray(p["scores"]), strict=True):
            dets.append({"image_id": i, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(gts))], "annotations": anns,
                      "categories": [{"id": 1, "name": "x"}]}
        gt.createIndex()
        if not dets:
            return [0.0 if anns else math.nan] * len(thrs)
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = np.array(thrs)
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, -1]  # (T, R), area all, maxDets 100
    return [float(np.mean(p)) if (p > -1).all() else math.nan for p in prec]


def _random_case(seed, n_images=15):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 4))
        xy = rng.uniform(0, 150, (m, 2))
        g = np.concatenate([xy, xy + rng.uniform(10, 60, (m, 2))], 1)
        jitter = g + rng.normal(0, 6, g.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        k = int(rng.integers(0, 4))
        rxy = rng.uniform(0, 150, (k, 2))
        rnd = np.concatenate([rxy, rxy + rng.uniform(10, 60, (k, 2))], 1)
        keep = rng.random(m) < 0.8  # some positives missed
        boxes = np.concatenate([jitter[keep], rnd])
        preds.append({"boxes": boxes, "scores": rng.uniform(0.5, 1.0, len(boxes))})
        gts.append(g)
    return preds, gts


def test_box_iou_hand_values():
    a = np.array([[0.0, 0, 10, 10]])
    b = np.array([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_strict_coco101_equals_pycocotools_on_random_cases(seed):
    preds, gts = _random_case(seed)
    ours = map_strict(preds, gts, conf_threshold=0.0)
    coco = _coco_aps(preds, gts)
    for t, ap in zip(THR, coco, strict=True):
        assert ours[f"AP@{t:.2f}"] == pytest.approx(ap, abs=1e-12)
    assert ours["mAP"] == pytest.approx(np.mean(coco), abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_reference_equals_torchmetrics_fed_like_mgca(seed):
    """MGCA fed torchmetrics only images with >= 1 NMS output and >= 1 GT box: same number."""
    from torchmetrics.detection import MeanAveragePrecision

    preds, gts = _random_case(seed, n_images=20)
    metric = MeanAveragePrecision(iou_thresholds=THR)
    for p, g in zip(preds, gts, strict=True):
        if len(p["boxes"]) and len(g):
            metric.update([{"boxes": torch.tensor(p["boxes"], dtype=torch.float64),
                            "scores": torch.tensor(p["scores"]), "labels": torch.zeros(len(p["boxes"]), dtype=int)}],
                          [{"boxes": torch.tensor(g), "labels": torch.zeros(len(g), dtype=int)}])
    expected = float(metric.compute()["map"])
    ours = map_reference(preds, gts, conf_threshold=0.0)
    assert ours["mAP"] == pytest.approx(expected, abs=1e-6)  # torchmetrics stores float32
    assert ours["n_images"] == sum(1 for p, g in zip(preds, gts, strict=True) if len(p["boxes"]) and len(g))


def test_quirk_dropped_negatives_and_missed_positives_inflate_reference():
    a = [10.0, 10, 50, 50]
    preds = [{"boxes": [a], "scores": [0.9]},  # hit
             {"boxes": np.zeros((0, 4)), "scores": []},  # missed positive
             {"boxes": [[100.0, 100, 140, 140]], "scores": [0.8]}]  # false positive on a negative
    gts = [np.array([a]), np.array([[60.0, 60, 90, 90]]), np.zeros((0, 4))]
    ref, strict = map_reference(preds, gts), map_strict(preds, gts)
    assert ref["mAP"] == pytest.approx(1.0) and ref["n_images"] == 1 and ref["n_gt"] == 1
    # strict: ranked TP (0.9), FP (0.8), 2 GT: recall 0.5 at precision 1 -> 51 of 101 recall points
    assert strict["mAP"] == pytest.approx(51 / 101)
    assert strict["n_images"] == 3 and strict["n_gt"] == 2
    assert map_strict(preds, gts, interpolation="all")["mAP"] == pytest.approx(0.5)
    assert [strict["mAP"]] * len(THR) == pytest.approx(_coco_aps(preds, gts))


def test_conf_threshold_filters_boxes_and_reference_drops_images_without_confident_box():
    preds = [{"boxes": [[0.0, 0, 10, 10]], "scores": [0.4]}, {"boxes": [[0.0, 0, 10, 10]], "scores": [0.6]}]
    gts = [np.array([[0.0, 0, 10, 10]]), np.array([[0.0, 0, 10, 10]])]
    assert map_reference(preds, gts)["n_images"] == 1
    assert map_reference(preds, gts)["mAP"] == pytest.approx(1.0)
    assert map_strict(preds, gts)["mAP"] == pytest.approx(51 / 101)  # recall 0.5 at precision 1


def test_interpolations_on_hand_built_ranking():
    # ranked TP, FP, TP with 3 GT: recall (1/3, 1/3, 2/3), precision (1, 1/2, 2/3)
    tp, scores = np.array([True, False, True]), np.array([0.9, 0.8, 0.7])
    assert average_precision(tp, scores, 3, "all") == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    # 101-point: r in 0..0.33 -> 1 (34 points), r in 0.34..0.66 -> 2/3 (33 points), rest 0
    assert average_precision(tp, scores, 3, "coco101") == pytest.approx((34 + 33 * 2 / 3) / 101)
    assert math.isnan(average_precision(tp, scores, 0))
    assert average_precision(np.zeros(0, bool), np.zeros(0), 2) == 0.0


def test_iou_threshold_levels_separate():
    # a detection with IoU 0.6 is a TP at 0.40..0.60 and a FP at 0.65..0.75
    preds = [{"boxes": [[0.0, 0, 10, 10]], "scores": [0.9]}]
    gts = [np.array([[0.0, 0, 10, 6]])]  # IoU = 60 / 100
    out = map_strict(preds, gts)
    assert [out[f"AP@{t:.2f}"] for t in THR] == pytest.approx([1, 1, 1, 1, 1, 0, 0, 0])
    assert out["mAP"] == pytest.approx(5 / 8)
    assert list(out)[:9] == ["mAP"] + [f"AP@{t:.2f}" for t in THR]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one each"):
        map_strict([], [np.zeros((0, 4))])


def test_bad_interpolation_raises_even_without_detections():
    with pytest.raises(ValueError, match="interpolation"):
        map_strict([{"boxes": np.zeros((0, 4)), "scores": []}], [np.array([[0.0, 0, 5, 5]])], interpolation="voc11")


def test_torch_inputs_are_accepted():
    preds = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.7])}]
    out = map_reference(preds, [torch.tensor([[0.0, 0, 10, 10]])])
    assert out["mAP"] == pytest.approx(1.0) and out["n_images"] == 1


def test_boxes_outside_the_image_are_scored_as_given():
    """A detection reaching outside the image (x1 = -16.5) is matched as it is, not clipped (MGCA clips nowhere):
    IoU with its GT box [0, 20, 40, 60] is 40 * 40 / (56.5 * 40) = 0.708 (a TP at 0.40..0.70, a FP at 0.75);
    clipped to x1 = 0 it would be 1 (a TP everywhere). Expected values from pycocotools on the same boxes."""
    gts = [np.array([[0.0, 20, 40, 60]]), np.array([[100.0, 100, 150, 150]])]
    preds = [{"boxes": [[-16.5, 20, 40, 60]], "scores": [0.9]}, {"boxes": [[100.0, 100, 150, 150]], "scores": [0.8]}]
    coco = _coco_aps(preds, gts)
    out = map_reference(preds, gts)
    assert [out[f"AP@{t:.2f}"] for t in THR] == pytest.approx(coco, abs=1e-12)
    # by hand: 7 thresholds both TPs (AP 1); at 0.75 ranked FP (0.9) then TP (0.8): precision 1/2 up to recall 1/2,
    # i.e. 51 of the 101 recall points
    assert out["mAP"] == pytest.approx((7 + 51 / 101 * 0.5) / 8)
    clipped = [{"boxes": [[0.0, 20, 40, 60]], "scores": [0.9]}, preds[1]]
    assert map_reference(clipped, gts)["mAP"] == pytest.approx(1.0)
