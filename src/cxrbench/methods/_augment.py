"""Batched tensor augmentations for pretraining, each owning its ``torch.Generator`` (seeded, never global).

Geometric transforms (random resized crop, rotation, shear, perspective, flip) are one projective warp per image,
sampled with ``grid_sample`` in a single batched call; intensity transforms (auto-contrast, brightness/contrast
jitter) are per-image affine maps. Random numbers are drawn on the CPU generator (a few per image) and moved to the
images' device, so the images themselves never leave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


@dataclass
class ViewConfig:
    """One augmented view. ``scale``: crop area fraction range; ``ratio``: aspect range; ``degrees``: rotation
    +-range; ``shear``: +-degrees; ``perspective``: max corner displacement (fraction of half-size); ``hflip``,
    ``autocontrast``: probabilities; ``brightness``/``contrast``: jitter strengths (factor in [1-s, 1+s])."""

    size: int = 64
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (1.0, 1.0)
    degrees: float = 0.0
    shear: float = 0.0
    perspective: float = 0.0
    hflip: float = 0.0
    autocontrast: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    @classmethod
    def from_params(cls, p: dict[str, Any] | None, size: int) -> ViewConfig:
        p = dict(p or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(p) - known)
        if unknown:
            raise KeyError(f"augment params: unknown keys {unknown}; known: {sorted(known - {'size'})}")
        for k in ("scale", "ratio"):
            if k in p:
                p[k] = tuple(float(v) for v in p[k])
        return cls(size=size, **{k: v for k, v in p.items() if k != "size"})


def warp_matrices(n: int, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) maps output coords (u, v, 1) in [-1, 1] to input coords (projective; see the module docstring)."""
    area = _uniform(gen, n, *cfg.scale)
    logr = _uniform(gen, n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    w = torch.sqrt(area * logr.exp()).clamp(max=1.0)
    h = torch.sqrt(area / logr.exp()).clamp(max=1.0)
    cx = (1 - w) * _uniform(gen, n, -1, 1)
    cy = (1 - h) * _uniform(gen, n, -1, 1)
    th = torch.deg2rad(_uniform(gen, n, -cfg.degrees, cfg.degrees))
    sh = torch.tan(torch.deg2rad(_uniform(gen, n, -cfg.shear, cfg.shear)))
    flip = torch.where(torch.rand(n, generator=gen) < cfg.hflip, -1.0, 1.0)
    m = torch.zeros(n, 3, 3)
    cos, sin = torch.cos(th), torch.sin(th)
    # R(th) @ [[1, sh], [0, 1]] @ diag(w * flip, h)
    m[:, 0, 0], m[:, 0, 1] = cos * w * flip, (cos * sh - sin) * h
    m[:, 1, 0], m[:, 1, 1] = sin * w * flip, (sin * sh + cos) * h
    m[:, 0, 2], m[:, 1, 2], m[:, 2, 2] = cx, cy, 1.0
    m[:, 2, :2] = cfg.perspective * _uniform(gen, 2 * n, -1, 1).reshape(n, 2)
    return m


def warp(x: torch.Tensor, mats: torch.Tensor, size: int) -> torch.Tensor:
    """x: (B, C, H, W), mats: (B, 3, 3) -> (B, C, size, size), bilinear, zeros outside the image."""
    lin = torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=x.device)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)  # (1, S*S, 3)
    src = pts @ mats.to(x.device, x.dtype).transpose(1, 2)  # (B, S*S, 3)
    grid = (src[..., :2] / src[..., 2:].clamp_min(1e-3)).reshape(-1, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def intensity(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """Auto-contrast (per-image min/max -> [0, 1]) with prob ``cfg.autocontrast``, then brightness/contrast."""
    B = x.shape[0]
    dev = x.device
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    ac = (torch.rand(B, generator=gen) < cfg.autocontrast).to(dev).reshape(B, 1, 1, 1)
    x = torch.where(ac, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    b = _uniform(gen, B, 1 - cfg.brightness, 1 + cfg.brightness).to(dev).reshape(B, 1, 1, 1)
    c = _uniform(gen, B, 1 - cfg.contrast, 1 + cfg.contrast).to(dev).reshape(B, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * b - mean) * c + mean).clamp(0, 1)


class ViewAugment:
    """Random views of a batch of [0, 1] images (B, C, H, W) -> (B, C, size, size); own seeded generator."""

    def __init__(self, cfg: ViewConfig, seed: int) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = warp(x, warp_matrices(x.shape[0], self.cfg, self.gen), self.cfg.size)
        return intensity(x, self.cfg, self.gen)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic evaluation view: bilinear resize of the whole (square) image."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class MultiCropConfig:
    """DINO multi-crop: two global crops (``global_scale``) and ``n_local`` local crops (``local_scale``)."""

    global_size: int = 56
    local_size: int = 28
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    view: dict[str, Any] = field(default_factory=dict)  # extra ViewConfig fields (flip, jitter, ...)


class MultiCrop:
    """x (B, C, H, W) -> (globals: list of 2 (B, C, Sg, Sg), locals: list of n_local (B, C, Sl, Sl))."""

    def __init__(self, cfg: MultiCropConfig, seed: int) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(int(seed))
        base = {**cfg.view}
        self.global_view = ViewConfig.from_params({**base, "scale": cfg.global_scale}, cfg.global_size)
        self.local_view = ViewConfig.from_params({**base, "scale": cfg.local_scale}, cfg.local_size)

    def _view(self, x: torch.Tensor, v: ViewConfig) -> torch.Tensor:
        return intensity(warp(x, warp_matrices(x.shape[0], v, self.gen), v.size), v, self.gen)

    def __call__(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        globals_ = [self._view(x, self.global_view) for _ in range(2)]
        locals_ = [self._view(x, self.local_view) for _ in range(self.cfg.n_local)]
        return globals_, locals_


def block_masks(
    n: int, h: int, w: int, *, ratio: tuple[float, float] = (0.1, 0.5), probability: float = 0.5,
    gen: torch.Generator, min_block: int = 4, aspect: float = 0.3,
) -> torch.Tensor:
    """iBOT block masking: (n, h*w) bool. The first ``round(n * probability)`` samples (DINOv2 masks a fixed share
    of the global crops) get a mask with target ratio spread evenly over ``ratio``; each is filled with random
    rectangles (area >= ``min_block`` patches, log-uniform aspect in [aspect, 1/aspect]) until the target count."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    n_masked = round(n * probability)
    targets = torch.linspace(ratio[0], ratio[1], max(n_masked, 1))
    for i in range(n_masked):
        target = max(1, round(float(targets[i]) * h * w))
        for _ in range(100):  # attempts; stops once the target is reached
            left = target - int(masks[i].sum())
            if left <= 0:
                break
            area = float(_uniform(gen, 1, min(min_block, left), max(min_block, left)))
            ar = math.exp(float(_uniform(gen, 1, math.log(aspect), -math.log(aspect))))
            bh = min(h, max(1, round(math.sqrt(area * ar))))
            bw = min(w, max(1, round(math.sqrt(area / ar))))
            top = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
            lft = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
            masks[i, top : top + bh, lft : lft + bw] = True
    return masks.reshape(n, h * w)


def to_input(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) normalised ((x - mean) / std), grayscale replicated."""
    return ((x - mean) / std).expand(-1, 3, -1, -1)
