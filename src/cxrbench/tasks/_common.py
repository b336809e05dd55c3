"""Helpers shared by the downstream tasks: parameter resolution, batch transforms (protocol.md), the frozen encoder
with its trainable neck, the store-backed dataset, frozen feature extraction with its on-disk cache, prompt
templates and atomic example files.

Transforms act on whole batches of store images x (B, 1, S, S) in [0, 1] and draw randomness from a
``torch.Generator`` owned by the task module (seeded by the run's seed), so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.models.necks import neck_for
from cxrbench.tasks._predictions import save_npz_atomic  # noqa: F401 - re-exported: the tasks' atomic npz writer

log = logging.getLogger(__name__)
STALE_WITH = ("data", "code", "n_rows", "store_size")  # key entries whose change makes a slot's older entry stale

# ------------------------------------------------------------------------------------------------ parameters


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def resolve(params: Mapping[str, Any], dataset: str, fraction: int) -> dict[str, Any]:
    """Task params with ``by_dataset.<dataset>`` then ``by_fraction.<fraction>`` merged over the top level
    (e.g. ``by_fraction: {1: {engine: {batch_size: 8, lr: 2.0e-4}}}``); the two override keys are dropped."""
    base = {k: v for k, v in params.items() if k not in ("by_dataset", "by_fraction")}
    for key, sel in (("by_dataset", dataset), ("by_fraction", fraction)):
        table = params.get(key) or {}
        over = table.get(sel, table.get(str(sel)))
        if over:
            base = _merge(base, over)
    return base


def engine_config(params: Mapping[str, Any], **fixed: Any) -> Any:
    """``cxrbench.engine.EngineConfig`` from ``params["engine"]`` over the task's ``fixed`` defaults (monitor,
    mode). ``drop_last`` defaults to False: a 1% training fraction may be smaller than one batch."""
    from cxrbench.engine import EngineConfig

    merged = {"drop_last": False, **fixed, **dict(params.get("engine") or {})}
    build = getattr(EngineConfig, "from_dict", None)
    return build(merged) if build else EngineConfig(**merged)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's default generator inside the block only (module initialisation), restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def device_of(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------------ transforms


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, S, S) -> (B, C, size, size); nearest for masks, antialiased bilinear for images."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def crop(x: torch.Tensor, size: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Square crop of ``size``: centred when ``gen`` is None, else a random offset per image."""
    B, _, H, W = x.shape
    if gen is None:
        top, left = (H - size) // 2, (W - size) // 2
        return x[..., top : top + size, left : left + size]
    tops = torch.randint(0, H - size + 1, (B,), generator=gen).tolist()
    lefts = torch.randint(0, W - size + 1, (B,), generator=gen).tolist()
    return torch.stack([x[i, :, t : t + size, s : s + size] for i, (t, s) in enumerate(zip(tops, lefts, strict=True))])


def classification_view(x: torch.Tensor, size: int, crop_ratio: float, gen: torch.Generator | None) -> torch.Tensor:
    """Protocol: resize to round(size / crop_ratio) (256 for 224), random crop at train (gen) / centre crop."""
    return crop(resize(x, round(size / crop_ratio)), size, gen)


def shift_scale_rotate(
    image: torch.Tensor,
    mask: torch.Tensor,
    gen: torch.Generator,
    *,
    shift: float = 0.1,
    scale: float = 0.1,
    rotate: float = 10.0,
    p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine per image with probability p (albumentations ShiftScaleRotate semantics): shift in
    [-shift, shift] of the size, zoom 1 + [-scale, scale], rotation [-rotate, rotate] degrees; zero fill.
    image (B, C, H, W) bilinear, mask (B, 1, H, W) nearest, same transform."""
    B = image.shape[0]
    u = torch.rand(B, 5, generator=gen)
    apply = (u[:, 0] < p).float()
    ang = torch.deg2rad((u[:, 1] * 2 - 1) * rotate) * apply
    zoom = 1 + (u[:, 2] * 2 - 1) * scale * apply
    tx, ty = ((u[:, 3] * 2 - 1) * shift * 2 * apply), ((u[:, 4] * 2 - 1) * shift * 2 * apply)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    img = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    msk = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, msk


def to_input(x: torch.Tensor, normalize: Mapping[str, Any], *, scaled: bool = False) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) normalised (x - mean) / std (scalars or per-channel lists).

    ``normalize`` is the encoder's input recipe as :class:`cxrbench.methods._base.Pretrained` carries it ({mean,
    std} plus the recipe's ``resize``, ``crop``, ``scale``; ``cxrbench.data.recipes``): with ``scale: minmax`` each
    view is first min-max scaled over its pixels, unless the caller already scaled it (``scaled``)."""
    if normalize.get("scale", "unit") == "minmax" and not scaled:
        from cxrbench.data.recipes import minmax, whole

        x = minmax(x, whole(x))
    mean = torch.as_tensor(normalize.get("mean", 0.5), dtype=x.dtype).reshape(-1, 1, 1)
    std = torch.as_tensor(normalize.get("std", 0.5), dtype=x.dtype).reshape(-1, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean.to(x.device)) / std.to(x.device)


def input_recipe(normalize: Mapping[str, Any], size: int) -> Any:
    """The :class:`cxrbench.data.recipes.Recipe` of an encoder at input ``size`` from the ``normalize`` mapping a
    :class:`Pretrained` carries (a checkpoint written before recipes existed: ``longer`` / ``none`` / ``unit``)."""
    from cxrbench.data.recipes import DEFAULT_INPUT, Recipe

    extra = {k: normalize.get(k, v) for k, v in DEFAULT_INPUT.items()}
    return Recipe.from_params({"image_size": int(size), "normalize": normalize, "input": extra}, "encoder")


def recipe_view(store: Any, rows: np.ndarray, x: torch.Tensor, normalize: Mapping[str, Any], size: int,
                crop_ratio: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """An image-level input as the encoder was fed: the recipe's region of each store image (``rows`` give the
    content boxes) and its scale, resized to round(size / crop_ratio), then the protocol's crop of ``size``
    (centred without ``gen``), normalised. x (B, 1, S, S) [0, 1] -> (B, 3, size, size)."""
    from cxrbench.data.recipes import check_store, content_boxes, view

    recipe = input_recipe(normalize, size)
    check_store(recipe, int(x.shape[-1]), "the encoder's view")
    region = view(x, recipe, content_boxes(store, rows), size=round(size / crop_ratio))
    return to_input(crop(region, size, gen), normalize, scaled=True)


def task_image_size(params: Mapping[str, Any], pretrained: Any) -> int:
    """``params.image_size`` or, when null, the encoder's own input size."""
    return int(params.get("image_size") or pretrained.image_size)


# ------------------------------------------------------------------------------------------------ encoder


class FrozenEncoder(nn.Module):
    """A frozen backbone (always in eval mode, no gradients) plus an optional trainable neck.

    forward(x (B, 3, H, W)) -> (pooled (B, D), pyramid [(B, C_j, H/t_j, W/t_j)] at ``out_strides`` t_j)."""

    def __init__(self, backbone: nn.Module, out_strides: Sequence[int] | None = None, channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.neck = neck_for(backbone, out_strides, channels) if out_strides else None
        self.channels = self.neck.out_channels if self.neck else list(backbone.pyramid_channels)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics of a frozen encoder never move
        return self

    def checkpoint_exclude(self) -> tuple[str, ...]:
        """The frozen backbone never changes during a fit: the engine's checkpoints leave it out."""
        return ("backbone.",)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.no_grad():
            out = self.backbone(x)
        return out.pooled, self.from_backbone(out.pyramid)

    def from_backbone(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The backbone's pyramid (computed now or read from the feature cache) through the trainable neck."""
        return self.neck(list(pyramid)) if self.neck is not None else list(pyramid)


def segmentation_strides(backbone: nn.Module) -> tuple[int, ...]:
    """The U-Net's pyramid: a backbone with native strides 4..32 keeps its own levels (plus 2 when present); any
    other (a ViT grid) gets a simple feature pyramid at 4, 8, 16, 32 through the neck."""
    native = set(backbone.pyramid_strides)
    if {4, 8, 16, 32} <= native:
        return tuple(s for s in (2, 4, 8, 16, 32) if s in native)
    return (4, 8, 16, 32)


# ------------------------------------------------------------------------------------------------ data


class StoreDataset(torch.utils.data.Dataset):
    """Rows of a prepared store as dicts {"image": (1, S, S) float in [0, 1], "label": (K,), "mask": (1, S, S),
    "boxes": (m, 4) store pixels xyxy, "row": int}; only the requested ``fields`` (plus "row") are read."""

    def __init__(self, store: Any, rows: np.ndarray, fields: Sequence[str] = ("image",)) -> None:
        self.store, self.rows, self.fields = store, np.asarray(rows, dtype=np.int64), tuple(fields)
        self._labels = torch.as_tensor(store.labels(self.rows)) if "label" in fields else None
        self._boxes = store.boxes(self.rows) if "boxes" in fields else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        item: dict[str, Any] = {"row": r}
        if "image" in self.fields:
            item["image"] = torch.from_numpy(np.asarray(self.store.images[r], dtype=np.float32) / 255.0)[None]
        if "mask" in self.fields:
            item["mask"] = torch.from_numpy(np.asarray(self.store.masks[r], dtype=np.float32) > 0).float()[None]
        if self._labels is not None:
            item["label"] = self._labels[i]
        if self._boxes is not None:
            item["boxes"] = torch.as_tensor(np.asarray(self._boxes[i], dtype=np.float32).reshape(-1, 4))
        return item


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep "boxes" as a list of (m_i, 4)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        out[key] = vals if key == "boxes" else (torch.stack(vals) if torch.is_tensor(vals[0]) else torch.tensor(vals))
    return out


def batches(dataset: torch.utils.data.Dataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Whole dataset in order (validation / test), collated by ``dataset.collate`` when it has one."""
    join = getattr(dataset, "collate", collate)
    for start in range(0, len(dataset), batch_size):
        yield join([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def positive_rows(store: Any, rows: np.ndarray) -> np.ndarray:
    """Rows whose mask (or, without masks, box list) is non-empty."""
    rows = np.asarray(rows, dtype=np.int64)
    if store.masks is not None:
        keep = np.array([bool(np.asarray(store.masks[r]).any()) for r in rows], dtype=bool)
    else:
        keep = np.array([len(b) > 0 for b in store.boxes(rows)], dtype=bool)
    return rows[keep]


def label_names(store: Any) -> list[str]:
    return [str(n) for n in store.label_names]


# ------------------------------------------------------------------------------------------------ features


def encoder_fingerprint(backbone: nn.Module) -> str:
    """sha256 (16 hex) of the backbone's class, config and every state-dict tensor: the encoder's identity
    (``cxrbench.fingerprint.module_hash``)."""
    from cxrbench.fingerprint import module_hash

    return module_hash(backbone)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    store: Any,
    rows: np.ndarray,
    *,
    size: int,
    crop_ratio: float,
    normalize: Mapping[str, Any],
    batch_size: int = 64,
) -> torch.Tensor:
    """Pooled features (n, D) float32 of the frozen ``backbone`` on the deterministic test view of ``rows``, in the
    order given: the encoder's input recipe (:func:`recipe_view`: its region and scale, resized to size /
    crop_ratio, centre crop ``size``, its normalisation)."""
    was_training = backbone.training
    backbone.eval()
    dev = device_of(backbone)
    out = []
    for batch in batches(StoreDataset(store, rows), batch_size):
        x = recipe_view(store, batch["row"].numpy(), batch["image"], normalize, size, crop_ratio)
        out.append(backbone(x.to(dev)).pooled.float().cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, int(backbone.out_dim))


class FeatureCache:
    """Frozen pooled features on disk, one file per key (:func:`cache_key`: encoder hash, store content hash, code
    version, dataset, split, view).

    ``get(key, compute)`` returns ``{"rows": (n,) int64, "features": (n, D) float32}``; on a miss it calls
    ``compute()`` (which returns the same dict) and writes it atomically (tmp file + os.replace). An entry is read
    only when its stored key equals the key asked for. File name ``<dataset>-<split>-<slot>-<id>.pt``: ``slot``
    hashes the key without the data and code hashes, so when an entry is written, the entries of the same slot
    (same encoder and view, older data or code) are stale and removed. ``root=None`` keeps entries in memory only.
    ``hits`` / ``misses`` count lookups."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def slot(key: Mapping[str, Any]) -> str:
        head = f"{key.get('dataset', 'data')}-{key.get('split', 'split')}"
        return f"{head}-{_digest({k: v for k, v in key.items() if k not in STALE_WITH}, 12)}"

    @classmethod
    def name(cls, key: Mapping[str, Any]) -> str:
        return f"{cls.slot(key)}-{_digest(dict(key), 12)}.pt"

    def _prune(self, key: Mapping[str, Any], keep: Path) -> None:
        """Remove the entries of ``key``'s slot other than ``keep``: same encoder and view, other data or code."""
        for old in keep.parent.glob(f"{self.slot(key)}-*.pt"):
            if old != keep:
                log.warning("%s: stale feature cache entry (the data or the code changed) removed", old)
                old.unlink(missing_ok=True)

    def get(self, key: Mapping[str, Any], compute: Any) -> dict[str, torch.Tensor]:
        name = self.name(key)
        path = self.root / name if self.root is not None else None
        if name in self.memory:
            self.hits += 1
            return self.memory[name]
        if path is not None and path.is_file():
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("key") == json.loads(json.dumps(dict(key), default=str)):
                self.hits += 1
                self.memory[name] = entry
                return entry
        self.misses += 1
        entry = {**compute(), "key": json.loads(json.dumps(dict(key), default=str))}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(entry, tmp)
            os.replace(tmp, path)
            self._prune(key, path)
        self.memory[name] = entry
        return entry


def cache_key(fingerprint: str, store: Any, split: str, **view: Any) -> dict[str, Any]:
    """The identity of a cache entry: the encoder (``fingerprint``, its weights' hash), the content of the prepared
    store (``cxrbench.fingerprint.data_hash``: image and mask bytes, label / split / fraction columns), the code
    version of the package, the split and whatever defines the view (image size, transform, normalisation,
    pyramid levels)."""
    from cxrbench.fingerprint import code_version, data_hash

    return {
        "encoder": fingerprint,
        "dataset": str(store.name),
        "split": split,
        "data": data_hash(store),
        "code": code_version(),
        "n_rows": int(len(store.images)),
        "store_size": int(store.size),
        **view,
    }


@torch.no_grad()
def backbone_pyramid(
    backbone: nn.Module, image: torch.Tensor, size: int, normalize: Mapping[str, Any], levels: Sequence[int]
) -> list[torch.Tensor]:
    """image (B, 1, S, S) in [0, 1] -> the frozen ``backbone``'s pyramid ``levels`` [(B, C_i, h_i, w_i)] float32
    on the CPU, on the deterministic view (resized to ``size``, the encoder's normalisation)."""
    x = to_input(resize(image, size), normalize).to(device_of(backbone))
    pyramid = backbone(x).pyramid
    return [pyramid[i].float().cpu() for i in levels]


def pyramid_bytes(backbone: nn.Module, size: int, normalize: Mapping[str, Any], levels: Sequence[int]) -> int:
    """float32 bytes of the cached pyramid levels of one image."""
    was = backbone.training
    backbone.eval()
    probe = torch.zeros(1, 1, size, size)
    total = sum(t.numel() * 4 for t in backbone_pyramid(backbone, probe, size, normalize, levels))
    backbone.train(was)
    return total


def cached_pyramid(
    backbone: nn.Module,
    cache: FeatureCache,
    store: Any,
    split: str,
    *,
    size: int,
    normalize: Mapping[str, Any],
    levels: Sequence[int],
    batch_size: int = 64,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The frozen backbone's pyramid ``levels`` for every row of ``split`` (fraction 100), through ``cache``:
    {"rows": (n,), "levels": [(n, C_i, h_i, w_i)]}. One entry per (encoder, store, split, view, levels), shared by
    every fraction, seed and epoch of the tasks that read it (detection's neck, the frozen U-Net's evaluation)."""
    key = cache_key(
        fingerprint or encoder_fingerprint(backbone),
        store,
        split,
        kind="pyramid",
        image_size=int(size),
        transform=f"resize{int(size)}",
        normalize=dict(normalize),
        levels=[int(i) for i in levels],
    )
    rows = np.asarray(store.rows(split, 100), dtype=np.int64)

    def compute() -> dict[str, Any]:
        was = backbone.training
        backbone.eval()
        parts: list[list[torch.Tensor]] = [[] for _ in levels]
        for batch in batches(StoreDataset(store, rows), batch_size):
            for k, level in enumerate(backbone_pyramid(backbone, batch["image"], size, normalize, levels)):
                parts[k].append(level)
        backbone.train(was)
        return {"rows": torch.from_numpy(rows), "levels": [torch.cat(p) for p in parts]}

    return cache.get(key, compute)


def _digest(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def row_index(entry: Mapping[str, torch.Tensor], rows: np.ndarray) -> torch.Tensor:
    """Positions of ``rows`` (in that order) in a cache entry covering a superset of them."""
    index = {int(r): i for i, r in enumerate(entry["rows"].tolist())}
    missing = [int(r) for r in rows if int(r) not in index]
    if missing:
        raise KeyError(f"feature cache entry lacks rows {missing[:5]} ({len(missing)} missing)")
    return torch.as_tensor([index[int(r)] for r in rows], dtype=torch.long)


def cached_features(
    cache: FeatureCache,
    backbone: nn.Module,
    store: Any,
    split: str,
    *,
    size: int,
    crop_ratio: float,
    normalize: Mapping[str, Any],
    batch_size: int,
    fingerprint: str | None = None,
) -> dict[str, torch.Tensor]:
    """Features of every row of ``split`` (fraction 100) through the cache; callers select fraction rows."""
    key = cache_key(
        fingerprint or encoder_fingerprint(backbone),
        store,
        split,
        image_size=int(size),
        transform=f"recipe-resize{round(size / crop_ratio)}-centrecrop{size}",
        normalize=dict(normalize),
        recipe=input_recipe(normalize, size).as_dict(),
    )
    rows = np.asarray(store.rows(split, 100), dtype=np.int64)

    def compute() -> dict[str, torch.Tensor]:
        feats = extract_features(
            backbone, store, rows, size=size, crop_ratio=crop_ratio, normalize=normalize, batch_size=batch_size
        )
        return {"rows": torch.from_numpy(rows), "features": feats}

    return cache.get(key, compute)


def select_rows(entry: Mapping[str, torch.Tensor], rows: np.ndarray) -> torch.Tensor:
    """Features of ``rows`` (in that order) from a cache entry covering a superset of them."""
    return entry["features"][row_index(entry, rows)]


# ------------------------------------------------------------------------------------------------ prompts

DEFAULT_PROMPTS = {"positive": "{disease}", "negative": "No {disease}"}


def disease_text(label: str) -> str:
    """Label column name -> the disease as written in a prompt ("Pleural_Thickening" -> "Pleural Thickening")."""
    return label.replace("_", " ").strip()


def prompt_pair(label: str, templates: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(positive, negative) prompts of the zero-shot protocol: "{disease}" vs "No {disease}"."""
    t = {**DEFAULT_PROMPTS, **dict(templates or {})}
    d = disease_text(label)
    return t["positive"].format(disease=d), t["negative"].format(disease=d)


# ------------------------------------------------------------------------------------------------ outputs


def nan_to_none(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: float nan -> None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def binary_labels(y: np.ndarray, uncertain_as: float = 1.0) -> np.ndarray:
    """Store labels (n, K) -> {0, 1}: NaN (not mentioned) -> 0, -1 (uncertain, CheXpert) -> ``uncertain_as``
    (1 = the U-Ones policy of the MGCA benchmark)."""
    y = np.nan_to_num(np.asarray(y, dtype=np.float32), nan=0.0)
    return np.where(y < 0, np.float32(uncertain_as), y).astype(np.float32)
