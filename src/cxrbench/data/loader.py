"""The torch side of a prepared store: :class:`ImageDataset` (samples as dicts of tensors) and :func:`collate`.

Kept apart from ``cxrbench.data.store`` so that preparing a dataset (which only writes stores) never imports torch:
the import costs ~3 s of every prepare job's start-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrbench.data.store import FIELDS, PreparedDataset


class ImageDataset(Dataset):
    """Samples of ``store`` at ``rows``: dicts with the requested ``fields`` plus "row".

    "image": float32 (1, S, S) in [0, 1]; "label": float32 (K,); "mask": float32 (1, S, S) in {0, 1};
    "boxes": float32 (m, 4) xyxy store pixels; "text": str; "row": int.
    ``transform`` is called on the whole sample dict and returns a dict. Image, mask and boxes are passed as
    torchvision ``tv_tensors`` (Image, Mask, BoundingBoxes) so a ``torchvision.transforms.v2`` pipeline moves
    them jointly; the result is converted back to plain tensors.
    """

    def __init__(
        self,
        store: PreparedDataset,
        rows: np.ndarray,
        transform: Any = None,
        *,
        fields: tuple[str, ...] = ("image",),
    ) -> None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; choose from {FIELDS}")
        if "mask" in fields and store.masks is None:
            raise ValueError(f"{store.root}: field 'mask' requested but the store has no masks.npy")
        self.store, self.rows, self.transform, self.fields = (
            store,
            np.asarray(rows, dtype=np.int64),
            transform,
            fields,
        )
        self._labels = store.labels(self.rows) if "label" in fields else None
        self._boxes = store.boxes(self.rows) if "boxes" in fields else None
        self._texts = store.texts(self.rows) if "text" in fields else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        sample: dict[str, Any] = {"row": r}
        if "image" in self.fields:
            sample["image"] = torch.from_numpy(self.store.images[r][None].astype(np.float32) / 255.0)
        if self._labels is not None:
            sample["label"] = torch.from_numpy(self._labels[i])
        if "mask" in self.fields:
            sample["mask"] = torch.from_numpy(self.store.masks[r][None].astype(np.float32))
        if self._boxes is not None:
            sample["boxes"] = torch.from_numpy(self._boxes[i])
        if self._texts is not None:
            sample["text"] = self._texts[i]
        if self.transform is not None:
            sample = _plain(self.transform(_wrapped(sample, self.store.size)))
        return sample


def _wrapped(sample: dict[str, Any], size: int) -> dict[str, Any]:
    from torchvision import tv_tensors

    out = dict(sample)
    if "image" in out:
        out["image"] = tv_tensors.Image(out["image"])
    if "mask" in out:
        out["mask"] = tv_tensors.Mask(out["mask"])
    if "boxes" in out:
        out["boxes"] = tv_tensors.BoundingBoxes(out["boxes"], format="XYXY", canvas_size=(size, size))
    return out


def _plain(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack "image" (B, 1, S, S), "label" (B, K), "mask" (B, 1, S, S), "row" (B,); boxes/text as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("boxes", "text"):
            out[key] = values
        elif key == "row":
            out[key] = torch.as_tensor(values, dtype=torch.int64)
        else:
            out[key] = torch.stack(values)
    return out
