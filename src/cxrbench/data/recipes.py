"""Input recipes: how each encoder is fed, as it was trained (issue 15 item 1).

A recipe is a method's ``image_size`` (the encoder's input side), its ``normalize`` ({mean, std}, a scalar or one value
per channel) and its ``input`` block::

    input: {resize: longer | shorter | stretch, crop: center | none, scale: unit | minmax}

- ``resize``: which part of the original image becomes the ``size x size`` input.
  ``longer``: the longest side fitted to ``size``, aspect kept, zero padded (the MGCA protocol; exactly the prepared
  store's own geometry, ``cxrbench.data.images``). ``shorter``: the shorter side fitted to ``size``, aspect kept, the
  longer side centre-cropped (RAD-DINO: transformers ``BitImageProcessor`` with ``size.shortest_edge`` 518 and
  ``crop_size`` 518 in microsoft/rad-dino's ``preprocessor_config.json``). ``stretch``: the image content squashed to
  ``size x size`` (G2D-NeurIPS24 and M-FLAG-MICCAI2023 ``ext_data.py``: ``skimage.transform.resize(img, (resize,
  resize))`` of the image cropped to its non-zero box).
- ``crop``: ``center`` for a recipe whose released pipeline centre-crops (``shorter`` needs it: a batch is square);
  ``none`` otherwise. With ``longer``/``stretch`` the fitted image is already square, so the two agree.
- ``scale``: ``unit`` keeps the stored intensities (uint8 / 255, what ``ToTensor`` and transformers' ``rescale_factor``
  1/255 give); ``minmax`` maps each image's own [min, max] over its content to [0, 1] (RAD-DINO model card: training
  DICOMs "min-max scaled to [0, 255]"; G2D / M-FLAG ``ext_data.py``: ``(img - img.min()) / (img.max() - img.min())``).
  Padding stays 0.

One store, resized on the fly. The prepared store holds every dataset once, at ``data.image_size`` (longest side,
aspect kept, zero padded; the manifest keeps each image's geometry, so the content box of every row is known). Each
recipe cuts its region from that square and resizes it to its own ``size``: one store serves every encoder of the
matrix, the preparation (the slow, fault-checked pass over the downloads) runs once, and a recipe change never
re-prepares data. The store must be at least as large as the largest recipe (a recipe that would upsample is an error
naming both numbers, :func:`check_store`); so set ``data.image_size`` to the largest ``image_size`` of the matrix.

Where recipes apply. Pretraining: each image's region and scale, back at the store size, before the method's own
augmentations (``cxrbench.methods._common.recipe_region``; the pretrain stage attaches the store's content boxes).
Image-level test views (the linear probe's frozen features, zero-shot classification;
``cxrbench.tasks._common.recipe_view``): the whole recipe, then the protocol's centre crop. Dense tasks
(segmentation, detection, grounding) score every labelled pixel, so they keep the whole store square (the ``longer``
geometry) and take the recipe's size and intensities only (``tasks._common.to_input``); so does fine-tuning for now
(its views are cut in the task file, which does not pass the rows).

Tensors: images (B, 1, S, S) float in [0, 1]; content boxes (B, 4) int64 ``(top, left, height, width)`` in store
pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RESIZES = ("longer", "shorter", "stretch")
CROPS = ("center", "none")
SCALES = ("unit", "minmax")
DEFAULT_INPUT = {"resize": "longer", "crop": "none", "scale": "unit"}
HF_PREPROCESSOR = "preprocessor_config.json"


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"{where}: expected a number or 3 per-channel values, got {value!r}")
    return (values[0], values[1], values[2])


@dataclass(frozen=True)
class Recipe:
    """One encoder's input recipe (module docstring). ``mean`` / ``std``: one value per input channel (3)."""

    size: int
    resize: str = "longer"
    crop: str = "none"
    scale: str = "unit"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for key, allowed in (("resize", RESIZES), ("crop", CROPS), ("scale", SCALES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"input.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.resize == "shorter" and self.crop != "center":
            raise ValueError("input.resize 'shorter' needs input.crop 'center' (a batch of inputs is square)")
        if int(self.size) < 1 or min(self.std) <= 0:
            raise ValueError(f"recipe size must be >= 1 and std > 0, got size={self.size} std={self.std}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "method") -> Recipe:
        """From a method's resolved parameters: ``image_size``, ``normalize`` {mean, std} and ``input``."""
        if "image_size" not in params:
            raise KeyError(f"{where}: missing 'image_size' (the recipe's input size)")
        norm = params.get("normalize") or {"mean": 0.5, "std": 0.5}
        extra = {**DEFAULT_INPUT, **dict(params.get("input") or {})}
        unknown = set(extra) - set(DEFAULT_INPUT)
        if unknown:
            raise KeyError(f"{where}.input: unknown keys {sorted(unknown)}; allowed {sorted(DEFAULT_INPUT)}")
        return cls(size=int(params["image_size"]), mean=_triple(norm["mean"], f"{where}.normalize.mean"),
                   std=_triple(norm["std"], f"{where}.normalize.std"), **extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`as_dict` (what encoder.pt records)."""
        return cls(size=int(d["size"]), resize=d["resize"], crop=d["crop"], scale=d["scale"],
                   mean=_triple(d["mean"], "recipe.mean"), std=_triple(d["std"], "recipe.std"))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(mean=list(self.mean), std=list(self.std))
        return out


# ------------------------------------------------------------------------------------------------ checkpoints


def from_hf_preprocessor(path: str | Path) -> dict[str, Any]:
    """Recipe parameters (``image_size``, ``normalize``, ``input`` without ``scale``) from a transformers image
    processor file (``preprocessor_config.json``, e.g. microsoft/rad-dino's ``BitImageProcessor``: ``size``
    {``shortest_edge``} or {``height``, ``width``}, ``do_center_crop`` + ``crop_size``, ``image_mean``, ``image_std``).
    ``scale`` is left to the caller: ``rescale_factor`` 1/255 is the store's own ``unit`` scale, and a min-max
    scaling of the training data (RAD-DINO) is not recorded in that file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the image processor config ({err})") from err
    size, crop = cfg.get("size") or {}, cfg.get("crop_size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    centre = bool(cfg.get("do_center_crop", False)) and bool(crop)
    if "shortest_edge" in size:
        resize, side = "shorter", int(crop.get("height", size["shortest_edge"])) if centre else None
        if side is None:
            raise ValueError(f"{path}: size.shortest_edge without do_center_crop/crop_size gives non-square inputs")
    elif "height" in size and "width" in size:
        resize, side = "stretch", int(crop.get("height", size["height"])) if centre else int(size["height"])
    else:
        raise ValueError(f"{path}: 'size' must hold shortest_edge or height and width, got {cfg.get('size')!r}")
    for key in ("image_mean", "image_std"):
        if key not in cfg:
            raise ValueError(f"{path}: missing {key!r}")
    return {"image_size": side, "normalize": {"mean": list(cfg["image_mean"]), "std": list(cfg["image_std"])},
            "input": {"resize": resize, "crop": "center" if centre or resize == "shorter" else "none"}}


def check_store(recipe: Recipe, store_size: int, where: str = "") -> None:
    """A recipe may only downsample the store: ``recipe.size > store_size`` is an error naming both numbers."""
    if int(recipe.size) > int(store_size):
        raise ValueError(
            f"{where or 'recipe'}: the encoder's input size {recipe.size} is larger than the prepared store's "
            f"{store_size} px (data.image_size); prepare the store at >= {recipe.size} px (the largest input size of "
            "the matrix) or lower the method's image_size"
        )


# ------------------------------------------------------------------------------------------------ content boxes


def content_boxes(store: Any, rows: np.ndarray) -> torch.Tensor:
    """(n, 4) int64 ``(top, left, height, width)`` of each row's image content in the store square, from the
    manifest's geometry (``orig_h``, ``orig_w``, ``pad_x``, ``pad_y``, ``scale``: ``new = round(orig * scale)``,
    :func:`cxrbench.data.images.fit_geometry`). A store without those columns (a test stand-in): the whole square."""
    rows = np.asarray(rows, dtype=np.int64)
    size = int(store.size)
    m = getattr(store, "manifest", None)
    if m is None or not {"orig_h", "orig_w", "pad_x", "pad_y", "scale"} <= set(m.columns):
        return torch.as_tensor(np.tile([0, 0, size, size], (len(rows), 1)), dtype=torch.int64)
    part = m.iloc[rows]
    scale = part["scale"].to_numpy(dtype=np.float64)
    h = np.clip(np.rint(part["orig_h"].to_numpy(dtype=np.float64) * scale), 1, size)
    w = np.clip(np.rint(part["orig_w"].to_numpy(dtype=np.float64) * scale), 1, size)
    top, left = part["pad_y"].to_numpy(dtype=np.float64), part["pad_x"].to_numpy(dtype=np.float64)
    return torch.as_tensor(np.stack([top, left, h, w], axis=1).astype(np.int64))


def whole(x: torch.Tensor) -> torch.Tensor:
    """Content boxes covering the whole square of each image of x (B, 1, S, S)."""
    B, _, H, W = x.shape
    return torch.as_tensor([[0, 0, H, W]] * B, dtype=torch.int64)


# ------------------------------------------------------------------------------------------------ the recipe


def minmax(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's content mapped from its own [min, max] to [0, 1] (a flat image to 0); outside the content 0.
    x (B, 1, S, S), boxes (B, 4) -> (B, 1, S, S)."""
    B, _, H, W = x.shape
    if bool((boxes == torch.as_tensor([0, 0, H, W])).all()):  # whole squares: one vectorised pass
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
    out = torch.zeros_like(x)
    for i, (t, s, h, w) in enumerate(boxes.tolist()):
        part = x[i, :, t : t + h, s : s + w]
        lo, hi = part.amin(), part.amax()
        out[i, :, t : t + h, s : s + w] = (part - lo) / (hi - lo) if hi > lo else torch.zeros_like(part)
    return out


def region(box: tuple[int, int, int, int], resize: str, store_size: int) -> tuple[int, int, int, int]:
    """The (top, left, height, width) that becomes the input: ``longer`` the whole store square (the store's own
    fit-and-pad geometry), ``stretch`` the content box, ``shorter`` the centred square of the content box."""
    t, s, h, w = box
    if resize == "longer":
        return 0, 0, store_size, store_size
    if resize == "stretch":
        return t, s, h, w
    side = min(h, w)
    return t + (h - side) // 2, s + (w - side) // 2, side, side


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(n, C, h, w) -> (n, C, size, size): antialiased bilinear (area-like when shrinking); unchanged at size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def view(x: torch.Tensor, recipe: Recipe, boxes: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
    """The recipe's geometry and scale, in [0, 1]: (B, 1, S, S) store images -> (B, 1, size, size) (``size``
    defaults to the recipe's). Order: ``scale`` over the content, then the ``resize`` region resized to ``size``."""
    boxes = whole(x) if boxes is None else boxes
    out_size = int(size or recipe.size)
    scaled = minmax(x, boxes) if recipe.scale == "minmax" else x
    out = x.new_zeros((x.shape[0], x.shape[1], out_size, out_size))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, box in enumerate(boxes.tolist()):  # images with the same region are resized in one call
        groups.setdefault(region(tuple(box), recipe.resize, int(x.shape[-1])), []).append(i)
    for (t, s, h, w), idx in groups.items():
        out[idx] = _resize(scaled[idx, :, t : t + h, s : s + w], out_size)
    return out


def normalise(x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W): the grey channel replicated, ``(x - mean_c) / std_c`` per channel."""
    mean = torch.as_tensor(recipe.mean, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    std = torch.as_tensor(recipe.std, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def apply(x: torch.Tensor, recipe: Recipe, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """The whole recipe: (B, 1, S, S) store images in [0, 1] (+ content boxes (B, 4)) -> (B, 3, size, size), the
    encoder's input as its released pipeline makes it."""
    return normalise(view(x, recipe, boxes), recipe)
