"""Batched tensor augmentations for pretraining, each owning its ``torch.Generator`` (seeded, never global).

Geometric transforms (random resized crop, rotation, shear, perspective, flip) are one projective warp per image,
sampled with ``grid_sample`` in a single batched call; intensity transforms (auto-contrast, brightness/contrast
jitter) are per-image affine maps. Random numbers are drawn on the CPU generator (a few per image) and moved to the
images' device, so the images themselves never leave it.

Exact resume: called with ``step`` (the optimiser step) and ``ids`` (the samples' dataset rows), every image's random
numbers come from its own generator seeded by ``sample_seed(seed, step, id)``, so the views are a pure function of
(seed, step, row) - a run killed and resumed from a checkpoint draws exactly what an uninterrupted run draws, with
any batch composition (grad accumulation, DDP ranks). Without ``step`` the owned stateful generator is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Gen = torch.Generator | list[torch.Generator]  # one shared generator, or one per image


def sample_seed(seed: int, step: int, idx: int, stream: int = 0) -> int:
    """A 63-bit generator seed that is a pure function of (seed, step, idx, stream) (numpy SeedSequence hash)."""
    words = [int(v) % 2**64 for v in (seed, step, idx, stream)]
    lo, hi = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).tolist()
    return (hi << 32 | lo) & (2**63 - 1)


def sample_generators(
    seed: int, step: int, ids: Sequence[int] | torch.Tensor, stream: int = 0
) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by ``sample_seed(seed, step, id, stream)``."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return [torch.Generator().manual_seed(sample_seed(seed, step, i, stream)) for i in ids]


def batch_generator(seed: int, step: int, ids: Sequence[int] | torch.Tensor, stream: int = 0) -> torch.Generator:
    """One CPU generator for a whole batch, seeded by a hash of (seed, step, stream, every id in order)."""
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    words = [int(v) % 2**64 for v in (seed, step, stream, *ids)]
    lo, hi = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).tolist()
    return torch.Generator().manual_seed((hi << 32 | lo) & (2**63 - 1))


def _rand(gen: Gen, n: int, k: int = 1) -> torch.Tensor:
    """U[0, 1) numbers: (n,) for k == 1 else (n, k). A list of n generators gives row i from generator i."""
    if isinstance(gen, torch.Generator):
        u = torch.rand(n * k, generator=gen)
    else:
        if len(gen) != n:
            raise ValueError(f"_augment: {len(gen)} generators for a batch of {n} images")
        u = torch.cat([torch.rand(k, generator=g) for g in gen]) if n else torch.zeros(0)
    return u if k == 1 else u.reshape(n, k)


def _uniform(gen: Gen, n: int, lo: float, hi: float, k: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * _rand(gen, n, k)


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


def warp_matrices(n: int, cfg: ViewConfig, gen: Gen) -> torch.Tensor:
    """(n, 3, 3) maps output coords (u, v, 1) in [-1, 1] to input coords (projective; see the module docstring).
    ``gen``: one generator for the batch, or a list of n (one per image)."""
    area = _uniform(gen, n, *cfg.scale)
    logr = _uniform(gen, n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    w = torch.sqrt(area * logr.exp()).clamp(max=1.0)
    h = torch.sqrt(area / logr.exp()).clamp(max=1.0)
    cx = (1 - w) * _uniform(gen, n, -1, 1)
    cy = (1 - h) * _uniform(gen, n, -1, 1)
    th = torch.deg2rad(_uniform(gen, n, -cfg.degrees, cfg.degrees))
    sh = torch.tan(torch.deg2rad(_uniform(gen, n, -cfg.shear, cfg.shear)))
    flip = torch.where(_rand(gen, n) < cfg.hflip, -1.0, 1.0)
    m = torch.zeros(n, 3, 3)
    cos, sin = torch.cos(th), torch.sin(th)
    # R(th) @ [[1, sh], [0, 1]] @ diag(w * flip, h)
    m[:, 0, 0], m[:, 0, 1] = cos * w * flip, (cos * sh - sin) * h
    m[:, 1, 0], m[:, 1, 1] = sin * w * flip, (sin * sh + cos) * h
    m[:, 0, 2], m[:, 1, 2], m[:, 2, 2] = cx, cy, 1.0
    m[:, 2, :2] = cfg.perspective * _uniform(gen, n, -1, 1, k=2)
    return m


def warp(x: torch.Tensor, mats: torch.Tensor, size: int) -> torch.Tensor:
    """x: (B, C, H, W), mats: (B, 3, 3) -> (B, C, size, size), bilinear, zeros outside the image."""
    lin = torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=x.device)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)  # (1, S*S, 3)
    src = pts @ mats.to(x.device, x.dtype).transpose(1, 2)  # (B, S*S, 3)
    grid = (src[..., :2] / src[..., 2:].clamp_min(1e-3)).reshape(-1, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def intensity(x: torch.Tensor, cfg: ViewConfig, gen: Gen) -> torch.Tensor:
    """Auto-contrast (per-image min/max -> [0, 1]) with prob ``cfg.autocontrast``, then brightness/contrast."""
    B = x.shape[0]
    dev = x.device
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    ac = (_rand(gen, B) < cfg.autocontrast).to(dev).reshape(B, 1, 1, 1)
    x = torch.where(ac, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    b = _uniform(gen, B, 1 - cfg.brightness, 1 + cfg.brightness).to(dev).reshape(B, 1, 1, 1)
    c = _uniform(gen, B, 1 - cfg.contrast, 1 + cfg.contrast).to(dev).reshape(B, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * b - mean) * c + mean).clamp(0, 1)


class ViewAugment:
    """Random views of a batch of [0, 1] images (B, C, H, W) -> (B, C, size, size); own seeded generator."""

    def __init__(self, cfg: ViewConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, x: torch.Tensor, *, step: int | None = None,
                 ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """With ``step``: per-image generators from (seed, step, ids[i]) (ids default: positions 0..B-1)."""
        gen = keyed(self.seed, step, ids, x.shape[0]) or self.gen
        x = warp(x, warp_matrices(x.shape[0], self.cfg, gen), self.cfg.size)
        return intensity(x, self.cfg, gen)


def keyed(seed: int, step: int | None, ids: Sequence[int] | torch.Tensor | None, n: int,
          stream: int = 0) -> list[torch.Generator] | None:
    """Per-image generators for (seed, step, ids) or None when ``step`` is None (use the owned generator)."""
    if step is None:
        return None
    ids = range(n) if ids is None else ids
    if len(ids) != n:
        raise ValueError(f"_augment: {len(ids)} sample ids for a batch of {n} images")
    return sample_generators(seed, step, ids, stream)


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
        self.cfg, self.seed = cfg, int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        base = {**cfg.view}
        self.global_view = ViewConfig.from_params({**base, "scale": cfg.global_scale}, cfg.global_size)
        self.local_view = ViewConfig.from_params({**base, "scale": cfg.local_scale}, cfg.local_size)

    @staticmethod
    def _view(x: torch.Tensor, v: ViewConfig, gen: Gen) -> torch.Tensor:
        return intensity(warp(x, warp_matrices(x.shape[0], v, gen), v.size), v, gen)

    def __call__(self, x: torch.Tensor, *, step: int | None = None,
                 ids: Sequence[int] | torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """With ``step``: image i's crops all come from its generator for (seed, step, ids[i]), in crop order."""
        gen = keyed(self.seed, step, ids, x.shape[0]) or self.gen
        globals_ = [self._view(x, self.global_view, gen) for _ in range(2)]
        locals_ = [self._view(x, self.local_view, gen) for _ in range(self.cfg.n_local)]
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


def to_input(x: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) normalised ((x - mean_c) / std_c), grayscale replicated; mean / std a
    number or one value per channel."""
    if isinstance(mean, int | float) and isinstance(std, int | float):
        return ((x - mean) / std).expand(-1, 3, -1, -1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x.expand(-1, 3, -1, -1) - m) / s
