"""Object detection: a YOLOv3 head on the frozen encoder's C3/C4/C5 (strides 8/16/32 through the neck), MGCA
protocol. Images resized to ``image_size`` without augmentation; COCO anchors scaled by image_size / 416; at most
``max_boxes`` boxes per image (RSNA 10, Object-CXR 20); early stopping on validation mAP (reference form).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.metrics.detection import map_reference, map_strict
from cxrbench.models.yolo import COCO_ANCHORS_416, YOLOv3Head, decode, yolo_loss
from cxrbench.registry import TASKS
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    FrozenEncoder,
    StoreDataset,
    batches,
    collate,
    device_of,
    engine_config,
    resize,
    resolve,
    save_npz_atomic,
    seeded,
    task_image_size,
    to_input,
)

MAX_BOXES = {"rsna": 10, "object_cxr": 20}


def scaled_anchors(size: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """COCO YOLOv3 anchors (416 px) scaled to ``size`` (224 gives the reference anchors)."""
    return tuple(tuple((w * size / 416, h * size / 416) for w, h in scale) for scale in COCO_ANCHORS_416)


class DetectionModel(nn.Module):
    """forward(batch {"image" (B, 1, S, S), "boxes" [(m, 4) store px]}) -> yolo_loss dict with "loss"."""

    def __init__(self, backbone: nn.Module, p: dict[str, Any], size: int, normalize: dict) -> None:
        super().__init__()
        self.encoder = FrozenEncoder(backbone, (8, 16, 32), int(p.get("neck_channels", 256)))
        self.anchors = scaled_anchors(size)
        widths = tuple(p.get("head_widths", (128, 256, 512)))
        self.head = YOLOv3Head(self.encoder.channels, num_classes=1, anchors=self.anchors, widths=widths)
        self.size, self.normalize, self.max_boxes = size, normalize, int(p["max_boxes"])

    def outputs(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = to_input(resize(image, self.size), self.normalize).to(device_of(self.head))
        return self.head(self.encoder(x)[1])

    def targets(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Boxes in input pixels (store px * size / S), at most ``max_boxes`` per image."""
        scale = self.size / batch["image"].shape[-1]
        return [(b[: self.max_boxes] * scale).to(device_of(self.head)) for b in batch["boxes"]]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return yolo_loss(self.outputs(batch["image"]), self.targets(batch), img_size=self.size, anchors=self.anchors)


@torch.no_grad()
def predict(model: DetectionModel, dataset: StoreDataset, batch_size: int, p: dict) -> tuple[list, list]:
    """(detections [{"boxes", "scores"}], ground truths [(m, 4)]) in input pixels over the whole dataset."""
    was = model.training
    model.eval()
    preds, gts = [], []
    for batch in batches(dataset, batch_size):
        out = model.outputs(batch["image"])
        dets = decode(
            out,
            img_size=model.size,
            anchors=model.anchors,
            conf_threshold=float(p.get("conf", 0.5)),
            nms_iou=float(p.get("nms_iou", 0.5)),
            max_boxes=model.max_boxes,
        )
        preds += [{k: v.cpu() for k, v in d.items()} for d in dets]
        gts += [t.cpu() for t in model.targets(batch)]
    model.train(was)
    return preds, gts


def _flat(prefix: str, res: dict[str, Any]) -> dict[str, Any]:
    """{"mAP": .., "AP@0.40": ..} -> {"mAP@reference": .., "AP@0.40@reference": ..}."""
    return {f"{k}@{prefix}": v for k, v in res.items()}


@TASKS.register("detection")
class Detection(Task):
    name = "detection"
    datasets = ("rsna", "object_cxr")
    metric_forms = {
        "mAP@reference": "MGCA mAP over IoU 0.40:0.05:0.75: only test images with >= 1 detection of confidence "
        ">= 0.5 AND >= 1 GT box count (negatives and missed positives dropped)",
        "mAP@strict": "mAP over IoU 0.40:0.05:0.75 over every test image (missed positives and false positives "
        "on negatives count)",
    }

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        p.setdefault("max_boxes", MAX_BOXES.get(str(data.name), 20))
        size = task_image_size(p, pretrained)
        fields = ("image", "boxes")
        sets = {"train": StoreDataset(data, data.rows("train", fraction), fields)}
        sets.update({s: StoreDataset(data, data.rows(s, 100), fields) for s in ("valid", "test")})
        self.n = {s: len(d) for s, d in sets.items()}
        with seeded(seed):
            model = DetectionModel(pretrained.backbone, p, size, pretrained.normalize)
        cfg = engine_config(p, monitor="val_mAP", mode="max")
        bs = int(getattr(cfg, "batch_size", 16))

        def val_fn(m: DetectionModel) -> dict[str, float]:
            value = map_reference(*predict(m, sets["valid"], bs, p), max_dets=m.max_boxes)["mAP"]
            return {"val_mAP": 0.0 if math.isnan(value) else value}  # nothing detected yet = 0, not undefined

        fit(model, sets["train"], cfg, Path(out_dir) / "train", seed=seed, collate_fn=collate, val_fn=val_fn)
        preds, gts = predict(model, sets["test"], bs, p)
        out = {
            **_flat("reference", map_reference(preds, gts, max_dets=model.max_boxes)),
            **_flat("strict", map_strict(preds, gts, max_dets=model.max_boxes)),
        }
        save_examples(Path(out_dir) / "examples.npz", sets["test"], preds, gts, size)
        return out


def _pad(arrays: list[np.ndarray], width: int) -> np.ndarray:
    """list of (m_i, width) -> (k, max m_i, width) NaN padded."""
    out = np.full((len(arrays), max([len(a) for a in arrays] + [1]), width), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def save_examples(path: Path, dataset: StoreDataset, preds: list, gts: list, size: int, k: int = 4) -> None:
    """First k test images (k, size, size), detections (k, n, 5: xyxy + score) and GT (k, m, 4), NaN padded."""
    k = min(k, len(preds))
    images = torch.stack([resize(dataset[i]["image"][None], size)[0, 0] for i in range(k)]).numpy()
    dets = [np.concatenate([d["boxes"].numpy(), d["scores"].numpy()[:, None]], 1) for d in preds[:k]]
    save_npz_atomic(
        path,
        image=images,
        pred=_pad(dets, 5),
        gt=_pad([g.numpy() for g in gts[:k]], 4),
        row=np.asarray(dataset.rows[:k]),
    )
