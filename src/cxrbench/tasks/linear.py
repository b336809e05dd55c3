"""Linear classification: a linear layer on the frozen encoder's pooled feature (MGCA protocol).

Features are computed once per (encoder, dataset, split, image size, transform) on the deterministic test view
(resize to size / crop_ratio, centre crop) and cached on disk (``cache_dir``), then reused for every fraction, seed
and epoch: the train-time random crop of the reference is therefore not applied (a documented deviation that makes
the probe a pure function of cached features). Multi-label datasets train with BCE-with-logits, multi-class
(COVIDx) with cross-entropy; early stopping on the validation loss, test with the best weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.metrics.classification import accuracy, auroc
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    FeatureCache,
    binary_labels,
    cached_features,
    encoder_fingerprint,
    engine_config,
    label_names,
    resolve,
    seeded,
    select_rows,
    task_image_size,
)

CLASSIFICATION_FORMS = {
    "AUROC": "sklearn roc_auc_score per label on the test split; macro mean over labels with both classes",
    "ACC": "multi-class top-1 accuracy (argmax of the class logits) on the test split",
}


def classification_loss(logits: torch.Tensor, y: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """logits, y: (B, K). Multi-label: mean BCE-with-logits; multi-class (y one-hot): CE(logits, argmax y)."""
    if multiclass:
        return F.cross_entropy(logits, y.argmax(1))
    return F.binary_cross_entropy_with_logits(logits, y)


def classification_metrics(y: np.ndarray, logits: np.ndarray, names: list[str], multiclass: bool) -> dict:
    """AUROC per label + macro (sigmoid / softmax scores); plus ACC for multi-class. y, logits: (N, K)."""
    t = torch.as_tensor(logits, dtype=torch.float32)
    scores = (t.softmax(1) if multiclass else t.sigmoid()).numpy()
    out = auroc(y, scores, names)
    if multiclass:
        out["ACC"] = accuracy(np.asarray(y).argmax(1), logits)
    return out


class LinearHead(nn.Module):
    """batch (features (B, D), labels (B, K)) -> {"loss"}; ``logits(features) -> (B, K)``."""

    def __init__(self, dim: int, num_labels: int, multiclass: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_labels)
        self.multiclass = multiclass

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.to(self.fc.weight.device))

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": classification_loss(self.logits(x), y.to(self.fc.weight.device), self.multiclass)}


def evaluate_head(head: LinearHead, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """(mean loss, logits (N, K)) of ``head`` on whole features x (N, D), labels y (N, K)."""
    was = head.training
    head.eval()
    with torch.no_grad():
        logits = head.logits(x).cpu()
        loss = float(classification_loss(logits, y, head.multiclass))
    head.train(was)
    return loss, logits.numpy()


@TASKS.register("linear")
class LinearProbe(Task):
    name = "linear"
    datasets = ("chexpert", "rsna", "covidx")
    metric_forms = CLASSIFICATION_FORMS

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.cache = FeatureCache(params.get("cache_dir"))
        self._fingerprints: dict[int, str] = {}
        self.n: dict[str, int] = {}

    def features(self, pretrained: Any, data: Any, split: str, p: dict[str, Any]) -> dict[str, torch.Tensor]:
        key = id(pretrained.backbone)
        if key not in self._fingerprints:
            self._fingerprints[key] = encoder_fingerprint(pretrained.backbone)
        return cached_features(
            self.cache,
            pretrained.backbone,
            data,
            split,
            size=task_image_size(p, pretrained),
            crop_ratio=float(p.get("crop_ratio", 0.875)),
            normalize=pretrained.normalize,
            batch_size=int(p.get("feature_batch_size", 64)),
            fingerprint=self._fingerprints[key],
        )

    def split_xy(self, pretrained: Any, data: Any, split: str, rows: np.ndarray, p: dict) -> tuple:
        x = select_rows(self.features(pretrained, data, split, p), rows)
        y = torch.from_numpy(binary_labels(data.labels(rows), float(p.get("uncertain_as", 1.0))))
        return x, y

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        names, multiclass = label_names(data), data.label_kind == "multiclass"
        xy = {
            s: self.split_xy(pretrained, data, s, np.asarray(data.rows(s, fraction if s == "train" else 100)), p)
            for s in ("train", "valid", "test")
        }
        self.n = {s: int(len(v[0])) for s, v in xy.items()}
        with seeded(seed):
            head = LinearHead(xy["train"][0].shape[1], len(names), multiclass)

        def val_fn(module: LinearHead) -> dict[str, float]:
            loss, logits = evaluate_head(module, *xy["valid"])
            return {"val_loss": loss}

        cfg = engine_config(p, monitor="val_loss", mode="min")
        train_set = torch.utils.data.TensorDataset(*xy["train"])
        fit(head, train_set, cfg, Path(out_dir) / "train", seed=seed, val_fn=val_fn)
        _, logits = evaluate_head(head, *xy["test"])
        _predictions.classification(out_dir, data.rows("test", 100), xy["test"][1].numpy(), logits=logits,
                                    labels=names, multiclass=multiclass)
        return classification_metrics(xy["test"][1].numpy(), logits, names, multiclass)
