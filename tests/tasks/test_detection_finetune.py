import numpy as np
import pytest
import torch

from cxrbench.models.yolo import REFERENCE_ANCHORS_224
from cxrbench.registry import TASKS
from cxrbench.tasks.detection import DetectionModel, scaled_anchors

DET = {
    "datasets": ["rsna"],
    "image_size": 64,
    "neck_channels": 8,
    "head_widths": [8, 8, 8],
    "engine": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
}


def det_store(make_store, name="rsna", n=18, size=64, fractions=None):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    boxes = []
    for i in range(n):
        if i % 3:
            img[i, 10:40, 12:30] = 220
            boxes.append(np.array([[12, 10, 30, 40]] * (12 if i == 1 else 1), np.float32))
        else:
            boxes.append(np.zeros((0, 4), np.float32))
    labels = np.array([[len(b) > 0] for b in boxes], np.float32)
    splits = np.array(["train"] * 8 + ["valid"] * 4 + ["test"] * 6)
    return make_store(name, img, labels, splits, label_names=["Pneumonia"], boxes=boxes, fractions=fractions)


def test_scaled_anchors_reference():
    assert np.allclose(np.array(scaled_anchors(224)), np.array(REFERENCE_ANCHORS_224))


def test_targets_scaled_and_capped(tiny_resnet):
    model = DetectionModel(tiny_resnet, {**DET, "max_boxes": 10}, 128, {"mean": 0.5, "std": 0.5})
    t = model.targets({"image": torch.zeros(2, 1, 64, 64), "boxes": [torch.ones(12, 4), torch.zeros(0, 4)]})
    assert t[0].shape == (10, 4) and float(t[0][0, 0]) == 2.0 and t[1].shape == (0, 4)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_detection_runs_both_forms(family, make_store, pretrained_factory, tiny_resnet, tiny_vit, tmp_path):
    pre = pretrained_factory(tiny_resnet if family == "resnet" else tiny_vit, image_size=64)
    task = TASKS.get("detection")(DET)
    m = task.run(pre, det_store(make_store), 100, 0, tmp_path)
    assert {"mAP@reference", "mAP@strict", "AP@0.40@strict", "AP@0.75@reference"} <= set(m)
    assert m["n_images@strict"] == 6 and task.n == {"train": 8, "valid": 4, "test": 6}
    ex = np.load(tmp_path / "examples.npz")
    assert ex["image"].shape == (4, 64, 64) and ex["gt"].shape[-1] == 4 and ex["pred"].shape[-1] == 5


def test_every_nms_output_reaches_the_metric_not_max_boxes(tiny_resnet, monkeypatch):
    """12 detections on one image (max_boxes 10 caps the ground truth only): the two highest-scoring are false
    positives, the other 10 hit the 10 GT boxes. All 12 reach the metric (torchmetrics' limit is 100), so recall
    reaches 1; the expected mAP is torchmetrics' on the same hand-made boxes."""
    from torchmetrics.detection import MeanAveragePrecision

    from cxrbench.metrics.detection import IOU_THRESHOLDS, map_reference
    from cxrbench.tasks.detection import predict

    model = DetectionModel(tiny_resnet, {**DET, "max_boxes": 10}, 64, {"mean": 0.5, "std": 0.5}, store_size=64)
    maps = [torch.zeros(1, 3, 6, n, n) for n in (8, 4, 2)]
    for m in maps:
        m[:, :, 4] = -20.0
    aw, ah = model.anchors[0][0]
    cells = [(2 * (k // 4), 2 * (k % 4)) for k in range(12)]
    logits = [3.0 - 0.1 * k for k in range(12)]
    for (j, i), logit in zip(cells, logits, strict=True):
        maps[0][0, 0, 4, j, i] = logit  # t_xy = 0 (centre of the cell), t_wh = 0 (anchor 0)
    boxes = torch.tensor([[8 * i + 4 - aw / 2, 8 * j + 4 - ah / 2, 8 * i + 4 + aw / 2, 8 * j + 4 + ah / 2]
                          for j, i in cells])
    monkeypatch.setattr(model, "outputs", lambda batch: [m.flatten(1, 2) for m in maps])
    gt = boxes[2:]
    preds, gts = predict(model, [{"image": torch.zeros(1, 64, 64), "boxes": gt}], 4, {})
    assert len(preds[0]["boxes"]) == 12 and len(gts[0]) == 10
    scores = torch.sigmoid(torch.tensor(logits))

    def torchmetrics_map(n_dets):
        metric = MeanAveragePrecision(iou_thresholds=list(IOU_THRESHOLDS))
        metric.update([{"boxes": boxes[:n_dets], "scores": scores[:n_dets], "labels": torch.zeros(n_dets, dtype=int)}],
                      [{"boxes": gt, "labels": torch.zeros(10, dtype=int)}])
        return float(metric.compute()["map"])

    got = map_reference(preds, gts)["mAP"]
    assert got == pytest.approx(torchmetrics_map(12), abs=1e-6)
    assert got != pytest.approx(torchmetrics_map(10), abs=1e-3)  # what the old cap at max_boxes gave


def test_finetune_trains_a_copy_of_the_encoder(make_store, pretrained_factory, tiny_resnet, tmp_path):
    rng = np.random.default_rng(0)
    n = 24
    y = rng.integers(0, 2, size=(n, 3)).astype(np.float32)
    y[:3] = np.eye(3)
    y[3:6] = 1 - np.eye(3)
    img = rng.integers(0, 255, size=(n, 40, 40)).astype(np.uint8)
    store = make_store("nih", img, y, np.array(["train", "valid", "test"] * 8), label_names=["A", "B", "C_D"])
    pre = pretrained_factory(tiny_resnet)
    before = {k: v.clone() for k, v in pre.backbone.state_dict().items()}
    params = {
        "datasets": ["nih"],
        "image_size": 32,
        "crop_ratio": 0.8,
        "engine": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
    }
    task = TASKS.get("finetune")(params)
    m = task.run(pre, store, 100, 0, tmp_path)
    assert {"AUROC", "AUROC/A", "AUROC/B", "AUROC/C_D"} <= set(m)
    assert all(torch.equal(before[k], v) for k, v in pre.backbone.state_dict().items())
    assert m == TASKS.get("finetune")(params).run(pre, store, 100, 0, tmp_path / "again")  # seed -> same numbers


def test_detection_cached_levels_match_streaming_and_are_reused(make_store, pretrained_factory, tiny_resnet, tmp_path):
    """The frozen encoder's levels are computed once per split and give the same run as streaming the images."""
    store = det_store(make_store, fractions={10: [1, 2, 4]})
    pre = pretrained_factory(tiny_resnet, image_size=64)
    cached = TASKS.get("detection")({**DET, "cache_dir": str(tmp_path / "cache")})
    m_cached = cached.run(pre, store, 100, 0, tmp_path / "a")
    assert cached.cached and cached.cache.misses == 3  # train, valid, test computed once
    saved = torch.load(tmp_path / "a" / "train" / "last.ckpt", weights_only=False)["model"]
    assert saved and not any(k.startswith("encoder.backbone.") for k in saved)  # the frozen encoder is left out
    assert any(k.startswith("head.") for k in saved)
    streamed = TASKS.get("detection")({**DET, "feature_cache": False})
    m_streamed = streamed.run(pre, store, 100, 0, tmp_path / "b")
    assert not streamed.cached
    for key in ("mAP@strict", "AP@0.40@strict", "n_gt@strict", "n_images@strict"):
        assert m_cached[key] == pytest.approx(m_streamed[key], abs=1e-6)
    again = TASKS.get("detection")({**DET, "cache_dir": str(tmp_path / "cache")})
    again.run(pre, store, 10, 1, tmp_path / "c")  # another fraction and seed: every split from the disk cache
    assert (again.cache.misses, again.cache.hits) == (0, 3)
    tiny = TASKS.get("detection")({**DET, "feature_cache_max_gb": 1e-9})
    tiny.run(pre, store, 100, 0, tmp_path / "d")
    assert not tiny.cached  # over the size limit: images stream through the encoder


def test_cached_levels_loss_equals_image_loss(make_store, tiny_resnet):
    store = det_store(make_store)
    with torch.no_grad():
        model = DetectionModel(tiny_resnet, {**DET, "max_boxes": 10}, 64, {"mean": 0.5, "std": 0.5}, store_size=64)
        rows = np.arange(6)
        from cxrbench.tasks._common import StoreDataset, collate
        from cxrbench.tasks.detection import CachedLevels

        images = collate([StoreDataset(store, rows, ("image", "boxes"))[i] for i in range(6)])
        entry = {"rows": torch.from_numpy(rows), "levels": model.backbone_levels(images["image"])}
        cached = CachedLevels.collate([CachedLevels(entry, store, rows)[i] for i in range(6)])
        assert float(model(images)["loss"]) == pytest.approx(float(model(cached)["loss"]), rel=1e-5)
