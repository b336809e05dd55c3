"""Fine-tuned classification (NIH ChestX-ray14, 14 labels): the whole encoder plus a linear layer train together
(reference: 256 x 256 inputs, AdamW lr 1e-4, batch 64, <= 50 epochs). Train view: resize to size / crop_ratio and
random crop; test view: centre crop. Early stopping on the validation loss; test with the best weights. The
pretrained backbone is deep-copied, so the caller's encoder is never modified.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    StoreDataset,
    batches,
    binary_labels,
    classification_view,
    collate,
    device_of,
    engine_config,
    label_names,
    resolve,
    seeded,
    task_image_size,
    to_input,
)
from cxrbench.tasks.linear import CLASSIFICATION_FORMS, classification_loss, classification_metrics


class FinetuneModel(nn.Module):
    """backbone + Linear(out_dim, K). forward(batch {"image" (B, 1, S, S), "label" (B, K)}) -> {"loss"}."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        *,
        multiclass: bool,
        size: int,
        crop_ratio: float,
        normalize: dict,
        seed: int,
        uncertain_as: float,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        for prm in self.backbone.parameters():
            prm.requires_grad_(True)
        self.fc = nn.Linear(int(backbone.out_dim), num_labels)
        self.multiclass, self.size, self.crop_ratio, self.normalize = multiclass, size, crop_ratio, normalize
        self.uncertain_as = uncertain_as
        self.gen = torch.Generator().manual_seed(seed)

    def logits(self, image: torch.Tensor, train: bool) -> torch.Tensor:
        view = classification_view(image, self.size, self.crop_ratio, self.gen if train else None)
        return self.fc(self.backbone(to_input(view, self.normalize).to(device_of(self.fc))).pooled)

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        y = binary_labels(batch["label"].numpy(), self.uncertain_as)
        return torch.from_numpy(y).to(device_of(self.fc))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"], self.training)
        return {"loss": classification_loss(logits, self.targets(batch), self.multiclass)}


@torch.no_grad()
def predict(model: FinetuneModel, dataset: StoreDataset, batch_size: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, labels (N, K), logits (N, K)) on the test view of the whole dataset."""
    was = model.training
    model.eval()
    ys, zs = [], []
    for batch in batches(dataset, batch_size):
        zs.append(model.logits(batch["image"], False).float().cpu())
        ys.append(model.targets(batch).cpu())
    model.train(was)
    y, z = torch.cat(ys), torch.cat(zs)
    return float(classification_loss(z, y, model.multiclass)), y.numpy(), z.numpy()


@TASKS.register("finetune")
class Finetune(Task):
    name = "finetune"
    relative_cost = 15
    datasets = ("nih",)
    metric_forms = CLASSIFICATION_FORMS

    def split_rows(self, data: Any, fraction: int, p: dict[str, Any], out_dir: Path) -> dict[str, np.ndarray]:
        """{"train", "valid", "test": store rows}: the prepared store's split, its ``fraction`` file for train."""
        return {"train": data.rows("train", fraction), "valid": data.rows("valid", 100), "test": data.rows("test", 100)}

    def fit_fingerprint(self, p: dict[str, Any]) -> dict[str, Any] | None:
        """Inputs beyond the run's own fingerprint that key the resumable training state (none here)."""
        return None

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        names, multiclass = label_names(data), data.label_kind == "multiclass"
        fields = ("image", "label")
        sets = {s: StoreDataset(data, rows, fields) for s, rows in self.split_rows(data, fraction, p, out_dir).items()}
        self.n = {s: len(d) for s, d in sets.items()}
        with seeded(seed):
            model = FinetuneModel(
                copy.deepcopy(pretrained.backbone),
                len(names),
                multiclass=multiclass,
                size=task_image_size(p, pretrained),
                crop_ratio=float(p.get("crop_ratio", 0.875)),
                normalize=pretrained.normalize,
                seed=seed,
                uncertain_as=float(p.get("uncertain_as", 1.0)),
            )
        cfg = engine_config(p, monitor="val_loss", mode="min")
        bs = int(getattr(cfg, "batch_size", 64))
        fit(
            model,
            sets["train"],
            cfg,
            Path(out_dir) / "train",
            seed=seed,
            collate_fn=collate,
            val_fn=lambda m: {"val_loss": predict(m, sets["valid"], bs)[0]},
            fingerprint=self.fit_fingerprint(p),
        )
        _, y, logits = predict(model, sets["test"], bs)
        _predictions.classification(out_dir, sets["test"].rows, y, logits=logits, labels=names,
                                    multiclass=multiclass)
        return classification_metrics(y, logits, names, multiclass)
