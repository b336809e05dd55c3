"""Zero-shot grounding: the prompt embedding is compared with every position of the method's dense image embedding;
the (h, w) cosine map is upsampled (bilinear) to the input size and scored against the ground-truth region:
pointing game (argmax inside the region), IoU and Dice of the per-image min-max normalised map binarised at
``threshold``. RSNA and SIIM: positive test images only, prompt "{disease}"; MS-CXR: each row's phrase.
Ground truth: the store mask (boxes rasterised at the original resolution by prepare) resized nearest, or the
store boxes rasterised when the store has no masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrbench.metrics.grounding import map_iou_dice, pointing_game, rasterize_boxes
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    StoreDataset,
    batches,
    label_names,
    positive_rows,
    prompt_pair,
    resize,
    resolve,
    save_npz_atomic,
    task_image_size,
    to_input,
)


def similarity_maps(dense: torch.Tensor, text: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dense (B, D, h, w), text (B, D) (both L2-normalised along D) -> cosine maps at the native resolution
    (B, h, w) and upsampled bilinearly (B, size, size)."""
    sim = torch.einsum("bdhw,bd->bhw", dense.float(), text.float())
    return sim, F.interpolate(sim[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def ground_truth(data: Any, batch: dict[str, Any], size: int) -> torch.Tensor:
    """(B, size, size) bool region of each image."""
    if "mask" in batch:
        return resize(batch["mask"], size, "nearest")[:, 0] > 0.5
    s = batch["image"].shape[-1]
    return torch.stack([torch.from_numpy(rasterize_boxes(b.numpy(), (s, s), (size, size))) for b in batch["boxes"]])


@TASKS.register("grounding")
class Grounding(Task):
    name = "grounding"
    relative_cost = 1.5
    datasets = ("rsna", "siim", "ms_cxr")
    uses_fractions = False
    requires_text = True
    metric_forms = {
        "PointingGame": "fraction of positive test images whose similarity-map argmax lies inside the GT region "
        "(argmax on the map's native grid, taken at the best cell's centre)",
        "IoU": "mean IoU of the per-image min-max normalised map binarised at >= threshold vs the GT region",
        "Dice": "mean Dice of the same binarised map vs the GT region",
    }

    def prompts(self, data: Any, rows: np.ndarray, p: dict[str, Any]) -> list[str]:
        if str(data.name) in p.get("row_text_datasets", ["ms_cxr"]):
            texts = list(data.texts(rows))
            empty = [int(r) for r, t in zip(rows, texts, strict=True) if not str(t).strip()]
            if empty:
                raise ValueError(f"grounding: dataset {data.name!r} rows {empty[:5]} have no phrase text")
            return texts
        return [prompt_pair(label_names(data)[0], p.get("prompts"))[0]] * len(rows)

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        p = resolve(self.params, str(data.name), fraction)
        size = task_image_size(p, pretrained)
        rows = positive_rows(data, data.rows(str(p.get("split", "test")), 100))
        self.n = {"train": 0, "valid": 0, "test": int(len(rows))}
        texts = self.prompts(data, rows, p)
        fields = ("image", "mask") if data.masks is not None else ("image", "boxes")
        sims, natives, gts, images, bs = [], [], [], [], int(p.get("batch_size", 32))
        with torch.no_grad():
            for start, batch in zip(
                range(0, len(rows), bs), batches(StoreDataset(data, rows, fields), bs), strict=True
            ):
                img = resize(batch["image"], size)
                _, dense = pretrained.vl.embed_image(to_input(img, pretrained.normalize))
                text = pretrained.vl.embed_text(texts[start : start + bs])
                native, upsampled = similarity_maps(dense.cpu(), text.cpu(), size)
                natives.append(native)
                sims.append(upsampled)
                gts.append(ground_truth(data, batch, size))
                images.append(img[:, 0])
        sim, gt = torch.cat(sims).numpy(), torch.cat(gts).numpy()
        k = min(4, len(sim))
        save_npz_atomic(
            Path(out_dir) / "examples.npz", image=torch.cat(images)[:k].numpy(), mask=gt[:k], sim=sim[:k], row=rows[:k]
        )
        threshold = float(p.get("threshold", 0.5))
        _predictions.grounding(out_dir, rows, torch.cat(natives).numpy(), sim, gt, threshold=threshold)
        return {
            "PointingGame": pointing_game(torch.cat(natives).numpy(), gt),
            **map_iou_dice(sim, gt, threshold=threshold),
            "threshold": threshold,
        }
