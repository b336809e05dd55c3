"""G2D's parameter-free pseudo-mask processor: attention maps -> binary pseudo segmentation targets.

Everything runs batched on the input tensors' device under ``torch.no_grad`` with no host round trip (no
``.cpu()``, ``.numpy()``, ``.item()`` or Python branching on tensor values), so it can sit inside a GPU training
step. Steps (paper, Sec. 3 of G2D; ``variant="code"`` = steps 1, 2, 4 with a strict ``>`` over the whole image):

1. aggregate the query->patch attention over heads (``aggregate="mean"``), or keep each head (``"per_head"``:
   each head is thresholded separately and the masks are united - the Table 5 ablation);
2. nearest upsampling of the h x w map to the image size H x W (the square boundaries the paper mentions);
3. body mask: Otsu threshold of each image's 256-bin histogram (computed batched), holes filled by flood-filling
   the dark region connected to the image border (a fixed number of geodesic dilations at a working resolution
   of ``body_resolution`` px), then a morphological opening. This APPROXIMATES "largest component, holes filled":
   bright specks larger than the opening kernel that are not connected to the body survive;
4. threshold at the ``percentile``-th percentile of the map within the body mask (``inclusive``: score >= t,
   paper; else score > t, code); pixels outside the body are 0;
5. smooth the binary mask with a bilateral filter (spatial Gaussian x range Gaussian on the mask values) and
   re-binarise at 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AGGREGATES = ("mean", "per_head")


@torch.no_grad()
def pseudo_masks(
    attn: torch.Tensor,
    images: torch.Tensor,
    *,
    percentile: float = 85.0,
    aggregate: str = "mean",
    body_mask: bool | None = None,
    smooth: bool | None = None,
    inclusive: bool | None = None,
    variant: str = "paper",
    body_resolution: int = 64,
    bilateral_diameter: int = 5,
    sigma_space: float = 1.0,
    sigma_color: float = 1.0,
) -> torch.Tensor:
    """attn: (B, heads, h*w) (square grid) or (B, heads, h, w); images: (B, C, H, W) (any normalisation: the body
    mask rescales each image to [0, 1]). ``body_mask``/``smooth``/``inclusive`` left as None follow ``variant``
    (paper: True/True/True; code: False/False/False). Returns (B, 1, H, W) float in {0, 1}, no gradient."""
    if variant not in ("paper", "code"):
        raise ValueError(f"pseudo_masks: variant must be 'paper' or 'code', got {variant!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"pseudo_masks: aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    paper = variant == "paper"
    body_mask = paper if body_mask is None else body_mask
    smooth = paper if smooth is None else smooth
    inclusive = paper if inclusive is None else inclusive
    maps = _as_grid(attn).float()
    if aggregate == "mean":
        maps = maps.mean(dim=1, keepdim=True)  # (B, 1, h, w)
    H, W = images.shape[-2:]
    maps = F.interpolate(maps, size=(H, W), mode="nearest")  # (B, k, H, W)
    body = body_masks(images, resolution=body_resolution) if body_mask else torch.ones_like(maps[:, :1])
    masks = percentile_threshold(maps, body.expand_as(maps), percentile=percentile, inclusive=inclusive)
    masks = masks.amax(dim=1, keepdim=True)  # union over heads (a no-op for the mean map)
    if smooth:
        masks = bilateral_binary(masks, diameter=bilateral_diameter, sigma_space=sigma_space, sigma_color=sigma_color)
    return masks


def _as_grid(attn: torch.Tensor) -> torch.Tensor:
    if attn.ndim == 4:
        return attn
    if attn.ndim != 3:
        raise ValueError(f"pseudo_masks: attn must be (B, heads, HW) or (B, heads, h, w), got {tuple(attn.shape)}")
    side = math.isqrt(attn.shape[-1])
    if side * side != attn.shape[-1]:
        raise ValueError(f"pseudo_masks: flat attention of {attn.shape[-1]} positions is not a square grid")
    return attn.reshape(*attn.shape[:2], side, side)


def percentile_threshold(
    maps: torch.Tensor, region: torch.Tensor, *, percentile: float, inclusive: bool
) -> torch.Tensor:
    """maps, region: (B, k, H, W). Per (b, k): t = percentile (linear interpolation, numpy's default) of the map
    values inside ``region``; returns 1 where score >= t (inclusive) or > t, inside the region, else 0."""
    flat = maps.flatten(2)
    inside = region.flatten(2) > 0.5
    t = torch.nanquantile(flat.masked_fill(~inside, float("nan")), percentile / 100.0, dim=-1, keepdim=True)
    hit = flat >= t if inclusive else flat > t
    return (hit & inside).to(maps.dtype).reshape(maps.shape)


def otsu_thresholds(images: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """images: (B, N) in [0, 1] -> (B, 1) Otsu thresholds (maximum between-class variance of the histogram)."""
    idx = (images * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(images.shape[0], bins, device=images.device).scatter_add_(1, idx, torch.ones_like(images))
    p = hist / hist.sum(1, keepdim=True)
    levels = torch.linspace(0, 1, bins, device=images.device)
    w0 = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    between = (mu_t * w0 - mu).pow(2) / (w0 * (1 - w0)).clamp_min(1e-12)
    return levels[between.argmax(1)].unsqueeze(1)


def body_masks(images: torch.Tensor, *, resolution: int = 64, open_kernel: int = 3) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, 1, H, W) float {0, 1}: NOT (dark pixels connected to the border), opened.

    Dark = below the image's Otsu threshold; the flood fill from the border runs ``2 * resolution`` geodesic
    dilations at ``resolution`` px (fixed count: no data-dependent loop), so dark regions enclosed by the body
    (the lungs) are holes and get filled."""
    H, W = images.shape[-2:]
    x = images.float().mean(1, keepdim=True)
    x = F.interpolate(x, size=(resolution, resolution), mode="area")
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    t = otsu_thresholds(x.flatten(1)).reshape(-1, 1, 1, 1)
    dark = (x <= t).float()
    border = torch.zeros_like(dark)
    border[..., 0, :] = border[..., -1, :] = 1
    border[..., :, 0] = border[..., :, -1] = 1
    outside = dark * border
    for _ in range(2 * resolution):
        outside = F.max_pool2d(outside, 3, stride=1, padding=1) * dark
    body = 1 - outside
    pad = open_kernel // 2
    body = -F.max_pool2d(-body, open_kernel, stride=1, padding=pad)  # erosion
    body = F.max_pool2d(body, open_kernel, stride=1, padding=pad)  # dilation
    return F.interpolate(body, size=(H, W), mode="nearest")


def bilateral_binary(
    mask: torch.Tensor, *, diameter: int = 5, sigma_space: float = 1.0, sigma_color: float = 1.0
) -> torch.Tensor:
    """Bilateral filter of a {0, 1} mask (B, 1, H, W), re-binarised at 0.5.

    out(p) = sum_q w_s(p, q) w_r(p, q) m(q) / sum_q w_s w_r over the ``diameter`` x ``diameter`` window,
    w_s = exp(-||p - q||^2 / (2 sigma_space^2)), w_r = exp(-(m(p) - m(q))^2 / (2 sigma_color^2)); replicate padding.
    One shifted view per window offset keeps memory at O(B H W)."""
    r = diameter // 2
    H, W = mask.shape[-2:]
    padded = F.pad(mask, (r, r, r, r), mode="replicate")
    num = torch.zeros_like(mask)
    den = torch.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            q = padded[..., r + dy : r + dy + H, r + dx : r + dx + W]
            w = math.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2)) * torch.exp(
                -(q - mask).pow(2) / (2 * sigma_color**2)
            )
            num += w * q
            den += w
    return (num / den > 0.5).to(mask.dtype)
