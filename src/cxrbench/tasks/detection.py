"""Object detection: a YOLOv3 head on the frozen encoder's C3/C4/C5 (strides 8/16/32 through the neck), MGCA
protocol. Images resized to ``image_size`` without augmentation; COCO anchors scaled by image_size / 416; at most
``max_boxes`` ground-truth boxes per image (RSNA 10, Object-CXR 20); early stopping on validation mAP (reference form).
Detections follow MGCA's pipeline (``cxrbench.models.yolo.decode``: objectness >= ``conf``, boxes not clipped, NMS
with the +1-pixel IoU and suppression at >= ``nms_iou``), and every NMS output up to torchmetrics' 100 per image
(``MAX_DETECTIONS``) reaches the metric - not ``max_boxes``, which caps the ground truth only.

The encoder is frozen and the view deterministic, so the backbone levels the neck reads are computed once per
(encoder, dataset, split) and kept in the feature cache (``cache_dir``) for every fraction, seed and epoch, as the
linear probe does; a split whose levels would exceed ``feature_cache_max_gb`` streams images through the encoder
instead (same numbers, slower).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.metrics.detection import MAX_DETECTIONS, map_reference, map_strict
from cxrbench.models.yolo import COCO_ANCHORS_416, YOLOv3Head, decode, yolo_loss
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    FeatureCache,
    FrozenEncoder,
    StoreDataset,
    backbone_pyramid,
    batches,
    cached_pyramid,
    collate,
    device_of,
    encoder_fingerprint,
    engine_config,
    pyramid_bytes,
    resize,
    resolve,
    row_index,
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
    """forward(batch) -> yolo_loss dict with "loss". A batch holds "boxes" [(m, 4) store px] and either "image"
    (B, 1, S, S) or "levels" (the cached backbone levels the neck reads, see :class:`CachedLevels`)."""

    def __init__(
        self, backbone: nn.Module, p: dict[str, Any], size: int, normalize: dict, store_size: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = FrozenEncoder(backbone, (8, 16, 32), int(p.get("neck_channels", 256)))
        self.anchors = scaled_anchors(size)
        widths = tuple(p.get("head_widths", (128, 256, 512)))
        self.head = YOLOv3Head(self.encoder.channels, num_classes=1, anchors=self.anchors, widths=widths)
        self.size, self.normalize, self.max_boxes = size, normalize, int(p["max_boxes"])
        self.store_size = store_size
        self.levels = sorted(set(self.encoder.neck.sources))  # backbone pyramid levels the neck reads

    def backbone_levels(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, 1, S, S) in [0, 1] -> the backbone levels the neck reads, float32 on the CPU."""
        return backbone_pyramid(self.encoder.backbone, image, self.size, self.normalize, self.levels)

    def outputs(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        if "levels" in batch:
            pyramid: list[Any] = [None] * (max(self.levels) + 1)
            for i, level in zip(self.levels, batch["levels"], strict=True):
                pyramid[i] = level.to(device_of(self.head))
            return self.head(self.encoder.neck(pyramid))
        x = to_input(resize(batch["image"], self.size), self.normalize).to(device_of(self.head))
        return self.head(self.encoder(x)[1])

    def targets(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Boxes in input pixels (store px * size / S), at most ``max_boxes`` per image."""
        store_size = batch["image"].shape[-1] if "image" in batch else self.store_size
        scale = self.size / store_size
        return [(b[: self.max_boxes] * scale).to(device_of(self.head)) for b in batch["boxes"]]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return yolo_loss(self.outputs(batch), self.targets(batch), img_size=self.size, anchors=self.anchors)


class CachedLevels(torch.utils.data.Dataset):
    """Rows of a split as {"levels": [(C_i, h_i, w_i)], "boxes": (m, 4) store px, "row"} from a cache entry."""

    def __init__(self, entry: dict[str, Any], store: Any, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        idx = row_index(entry, self.rows)
        self.levels = [level[idx] for level in entry["levels"]]
        self.boxes = [torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4)) for b in store.boxes(self.rows)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"levels": [level[i] for level in self.levels], "boxes": self.boxes[i], "row": int(self.rows[i])}

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "levels": [torch.stack([b["levels"][k] for b in batch]) for k in range(len(batch[0]["levels"]))],
            "boxes": [b["boxes"] for b in batch],
            "row": torch.tensor([b["row"] for b in batch]),
        }


def level_bytes(model: DetectionModel) -> int:
    """float32 bytes of the cached levels of one image."""
    return pyramid_bytes(model.encoder.backbone, model.size, model.normalize, model.levels)


def cached_levels(
    model: DetectionModel, cache: FeatureCache, fingerprint: str, store: Any, split: str, batch_size: int
) -> dict[str, Any]:
    """The neck's input levels for every row of ``split`` (fraction 100), through ``cache``."""
    return cached_pyramid(
        model.encoder.backbone, cache, store, split, size=model.size, normalize=model.normalize,
        levels=model.levels, batch_size=batch_size, fingerprint=fingerprint,
    )


@torch.no_grad()
def predict(model: DetectionModel, dataset: Any, batch_size: int, p: dict) -> tuple[list, list]:
    """(detections [{"boxes", "scores"}], ground truths [(m, 4)]) in input pixels over the whole dataset."""
    was = model.training
    model.eval()
    preds, gts = [], []
    for batch in batches(dataset, batch_size):
        out = model.outputs(batch)
        dets = decode(
            out,
            img_size=model.size,
            anchors=model.anchors,
            conf_threshold=float(p.get("conf", 0.5)),
            nms_iou=float(p.get("nms_iou", 0.5)),
            max_boxes=MAX_DETECTIONS,
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
    relative_cost = 10
    datasets = ("rsna", "object_cxr")
    metric_forms = {
        "mAP@reference": "MGCA mAP over IoU 0.40:0.05:0.75 (COCO 101-point, as torchmetrics): detections as MGCA "
        "(objectness >= 0.5, boxes not clipped to the image, NMS with +1-pixel IoU suppressing at >= 0.5, up to 100 "
        "per image); only test images with >= 1 detection AND >= 1 GT box count (negatives and missed positives "
        "dropped)",
        "mAP@strict": "mAP over IoU 0.40:0.05:0.75 (COCO 101-point) over every test image (missed positives and "
        "false positives on negatives count); the same detections as the reference form (unclipped, MGCA NMS, up to "
        "100 per image)",
    }

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.cache = FeatureCache(params.get("cache_dir"))
        self.cached = False

    def datasets_for(self, model: DetectionModel, data: Any, rows: dict[str, np.ndarray], p: dict, bs: int) -> dict:
        """Cached levels per split when they fit ``feature_cache_max_gb``, else image datasets."""
        limit = float(p.get("feature_cache_max_gb", 4.0)) * 1e9
        largest = max(len(data.rows(s, 100)) for s in rows)
        self.cached = bool(p.get("feature_cache", True)) and largest * level_bytes(model) <= limit
        if not self.cached:
            return {s: StoreDataset(data, r, ("image", "boxes")) for s, r in rows.items()}
        fingerprint = encoder_fingerprint(model.encoder.backbone)
        return {
            s: CachedLevels(cached_levels(model, self.cache, fingerprint, data, s, bs), data, r)
            for s, r in rows.items()
        }

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        p.setdefault("max_boxes", MAX_BOXES.get(str(data.name), 20))
        size = task_image_size(p, pretrained)
        rows = {"train": np.asarray(data.rows("train", fraction), dtype=np.int64)}
        rows.update({s: np.asarray(data.rows(s, 100), dtype=np.int64) for s in ("valid", "test")})
        self.n = {s: len(r) for s, r in rows.items()}
        with seeded(seed):
            model = DetectionModel(pretrained.backbone, p, size, pretrained.normalize, store_size=int(data.size))
        cfg = engine_config(p, monitor="val_mAP", mode="max")
        bs = int(getattr(cfg, "batch_size", 16))
        sets = self.datasets_for(model, data, rows, p, int(p.get("feature_batch_size", 64)))

        def val_fn(m: DetectionModel) -> dict[str, float]:
            value = map_reference(*predict(m, sets["valid"], bs, p))["mAP"]
            return {"val_mAP": 0.0 if math.isnan(value) else value}  # nothing detected yet = 0, not undefined

        join = getattr(sets["train"], "collate", collate)
        fit(model, sets["train"], cfg, Path(out_dir) / "train", seed=seed, collate_fn=join, val_fn=val_fn)
        preds, gts = predict(model, sets["test"], bs, p)
        _predictions.detection(out_dir, rows["test"], preds, gts, max_dets=MAX_DETECTIONS)
        out = {
            **_flat("reference", map_reference(preds, gts)),
            **_flat("strict", map_strict(preds, gts)),
        }
        test_images = StoreDataset(data, rows["test"], ("image",))
        save_examples(Path(out_dir) / "examples.npz", test_images, preds, gts, size)
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
