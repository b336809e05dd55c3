"""Zero-shot classification (MedKLIP protocol as used by G2D): for every disease, the image embedding is compared
with a positive ("{disease}") and a negative ("No {disease}") prompt embedding and the score is the softmax over the
pair, p = exp(s+ / T) / (exp(s+ / T) + exp(s- / T)) = sigmoid((s+ - s-) / T) with s = cosine similarity.
AUROC per disease and macro; F1 and accuracy at the threshold maximising F1 ON THE TEST SET (as published).
Nothing trains: the task runs once (fraction 100) on the whole test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.metrics.classification import multilabel_zero_shot
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    StoreDataset,
    batches,
    binary_labels,
    label_names,
    prompt_pair,
    recipe_view,
    resolve,
    task_image_size,
)


def pair_scores(
    image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """image_emb (N, D), pos_emb / neg_emb (K, D), all L2-normalised -> (N, K) softmax-over-the-pair probability
    of the positive prompt."""
    s_pos, s_neg = image_emb @ pos_emb.T, image_emb @ neg_emb.T
    return torch.sigmoid((s_pos - s_neg) / temperature)


@torch.no_grad()
def image_embeddings(
    vl: Any, data: Any, rows: np.ndarray, *, size: int, crop_ratio: float, normalize: dict, batch_size: int
) -> torch.Tensor:
    """Global image embeddings (N, D) of ``rows`` on the test view: the encoder's input recipe (``recipe_view``:
    its region and scale, resize, centre crop, normalisation)."""
    out = [
        vl.embed_image(recipe_view(data, b["row"].numpy(), b["image"], normalize, size, crop_ratio))[0].cpu()
        for b in batches(StoreDataset(data, rows), batch_size)
    ]
    return torch.cat(out).float()


@TASKS.register("zeroshot")
class ZeroShotClassification(Task):
    name = "zeroshot"
    relative_cost = 2.5
    datasets = ("rsna", "siim", "nih", "chexpert")
    uses_fractions = False
    requires_text = True
    metric_forms = {
        "AUROC": "sklearn roc_auc_score per disease of softmax(positive, negative prompt); macro mean",
        "F1": "max F1 over thresholds chosen ON THE TEST SET (oracle threshold, as published; threshold/<disease>)",
        "ACC": "accuracy at the max-F1 test threshold (score > threshold, reference rule), macro mean",
    }

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        p = resolve(self.params, str(data.name), fraction)
        names = label_names(data)
        rows = np.asarray(data.rows(str(p.get("split", "test")), 100), dtype=np.int64)
        self.n = {"train": 0, "valid": 0, "test": int(len(rows))}
        vl = pretrained.vl
        prompts = [prompt_pair(n, p.get("prompts")) for n in names]
        with torch.no_grad():
            pos = vl.embed_text([a for a, _ in prompts]).float().cpu()
            neg = vl.embed_text([b for _, b in prompts]).float().cpu()
        img = image_embeddings(
            vl,
            data,
            rows,
            size=task_image_size(p, pretrained),
            crop_ratio=float(p.get("crop_ratio", 0.875)),
            normalize=pretrained.normalize,
            batch_size=int(p.get("batch_size", 64)),
        )
        scores = pair_scores(img, pos, neg, float(p.get("temperature", 1.0))).numpy()
        y = binary_labels(data.labels(rows), float(p.get("uncertain_as", 1.0)))
        _predictions.classification(out_dir, rows, y, scores=scores, labels=names)
        return multilabel_zero_shot(y, scores, names)
