"""G2D's parameter-free pseudo-mask processor: attention maps -> binary pseudo segmentation targets.

Everything runs batched on the input tensors' device under ``torch.no_grad`` with no host round trip (no
``.cpu()``, ``.numpy()``, ``.item()`` or Python branching on tensor values), so it can sit inside a GPU training
step. Steps (paper, Sec. 3 of G2D; the released code, ``PRETRAIN/utils/trainer.py`` ``Trainer.transform_att2label``,
runs steps 1, 2, 4 only: ``torch.sum(att, dim=1) / 4``, a NEAREST resize, ``np.quantile`` over the whole image and
``> threshold``, i.e. ``body_mask=False, smooth=False, inclusive=False``):

1. aggregate the query->patch attention over heads (``aggregate="mean"``), or keep each head (``"per_head"``:
   each head is thresholded separately and the masks are united - the Table 5 ablation);
2. nearest upsampling of the h x w map to the image size H x W (the square boundaries the paper mentions);
3. body mask: Otsu threshold of each image's 256-bin histogram (computed batched) at ``body_resolution`` px, holes
   filled by flood-filling the dark region connected to the image border (a fixed number, 2 x resolution, of
   8-connected geodesic dilations: no data-dependent loop), then a 3 x 3 morphological opening. This APPROXIMATES
   "largest component, holes filled": bright specks larger than the opening kernel that are not connected to the
   body survive, and a dark region reached from the border only by a path longer than 2 x resolution steps counts
   as a hole;
4. threshold each map within the body mask: at its ``percentile``-th percentile (``threshold="percentile"``; the
   median is percentile 50), at its mean (``"mean"``, the released code's ``merge_threshold: mean``), or by a
   two-component Gaussian mixture of its values (``"gmm"``, Table 5; the paper does not say how it was fitted:
   here EM for a fixed 30 iterations from mean -/+ std, a pixel is foreground when the higher-mean component's
   responsibility is > 0.5, or >= 0.5 if inclusive; an ablation, ~20x the cost of a percentile, outside the 5 %
   budget of the benchmark); ``inclusive``: score >= t (paper), else score > t (code);
   pixels outside the body are 0;
5. smooth the binary mask with a bilateral filter (spatial Gaussian x range Gaussian on the mask values) and
   re-binarise at 0.5 (computed in closed form for a binary mask: one separable Gaussian filter).

Cost: the flood fill and the opening run on rows packed 64 pixels to an int64 word (shifts and ORs on tensors of
B x h words: no ``max_pool2d``, whose single-channel CPU kernel is ~20x slower, and too small for the thread pool,
so the cost does not explode on a loaded machine); the bilateral filter is one separable Gaussian filter;
``tests/bench_methods.py`` asserts the share of a G2D step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AGGREGATES = ("mean", "per_head")
THRESHOLDS = ("percentile", "mean", "gmm")
GMM_ITERATIONS = 30


@torch.no_grad()
def pseudo_masks(
    attn: torch.Tensor,
    images: torch.Tensor,
    *,
    percentile: float = 85.0,
    aggregate: str = "mean",
    body_mask: bool = True,
    smooth: bool = True,
    inclusive: bool = True,
    threshold: str = "percentile",
    body_resolution: int = 64,
    bilateral_diameter: int = 5,
    sigma_space: float = 1.0,
    sigma_color: float = 1.0,
) -> torch.Tensor:
    """attn: (B, heads, h*w) (square grid) or (B, heads, h, w); images: (B, C, H, W) (any normalisation: the body
    mask rescales each image to [0, 1]). Defaults are the paper's form. Returns (B, 1, H, W) float in {0, 1}, no
    gradient."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"pseudo_masks: aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"pseudo_masks: threshold must be one of {THRESHOLDS}, got {threshold!r}")
    maps = _as_grid(attn).float()
    if aggregate == "mean":
        maps = maps.mean(dim=1, keepdim=True)  # (B, 1, h, w)
    H, W = images.shape[-2:]
    maps = F.interpolate(maps, size=(H, W), mode="nearest")  # (B, k, H, W)
    body = body_masks(images, resolution=body_resolution).expand_as(maps) if body_mask else None
    masks = threshold_maps(maps, body, percentile=percentile, inclusive=inclusive, threshold=threshold)
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


def threshold_maps(
    maps: torch.Tensor, region: torch.Tensor | None, *, percentile: float, inclusive: bool,
    threshold: str = "percentile",
) -> torch.Tensor:
    """maps: (B, k, H, W); region: same shape {0, 1} or None (whole image). Per (b, k): t = the ``percentile``-th
    percentile (linear interpolation, numpy's default) or the mean of the map values inside the region; returns 1
    where score >= t (inclusive) or > t, inside the region, else 0."""
    flat = maps.flatten(2)
    inside = None if region is None else region.flatten(2) > 0.5
    if threshold == "gmm":
        resp = gmm_foreground(flat, torch.ones_like(flat) if inside is None else inside.to(flat.dtype))
        hit = resp >= 0.5 if inclusive else resp > 0.5
        return (hit if inside is None else hit & inside).to(maps.dtype).reshape(maps.shape)
    if threshold == "mean":
        n = flat.shape[-1] if inside is None else inside.sum(-1, keepdim=True).clamp_min(1)
        t = (flat if inside is None else flat * inside).sum(-1, keepdim=True) / n
    elif inside is None:
        t = torch.quantile(flat, percentile / 100.0, dim=-1, keepdim=True)
    else:
        t = torch.nanquantile(flat.masked_fill(~inside, float("nan")), percentile / 100.0, dim=-1, keepdim=True)
    hit = flat >= t if inclusive else flat > t
    if inside is not None:
        hit &= inside
    return hit.to(maps.dtype).reshape(maps.shape)


def gmm_foreground(x: torch.Tensor, w: torch.Tensor, iterations: int = GMM_ITERATIONS) -> torch.Tensor:
    """x, w: (..., N) values and {0, 1} weights (the region). Fits a two-component 1-D Gaussian mixture per row by EM
    (``iterations`` fixed: no data-dependent loop), started at mean -/+ std with equal weights and the row's
    variance, and returns each value's responsibility of the higher-mean component, (..., N)."""
    n = w.sum(-1, keepdim=True).clamp_min(1)
    mean = (w * x).sum(-1, keepdim=True) / n
    var = (w * (x - mean) ** 2).sum(-1, keepdim=True) / n + 1e-12
    mu = torch.cat([mean - var.sqrt(), mean + var.sqrt()], -1)  # (..., 2)
    var2, pi = torch.cat([var, var], -1), torch.full_like(mu, 0.5)
    xs = x.unsqueeze(-1)  # (..., N, 1)

    def log_joint() -> torch.Tensor:  # (..., N, 2): log pi_j + log N(x | mu_j, var_j) up to a constant
        return (pi.log() - 0.5 * var2.log()).unsqueeze(-2) - (xs - mu.unsqueeze(-2)) ** 2 / (2 * var2.unsqueeze(-2))

    for _ in range(iterations):
        resp = torch.softmax(log_joint(), dim=-1) * w.unsqueeze(-1)  # (..., N, 2)
        nk = resp.sum(-2).clamp_min(1e-12)
        mu = (resp * xs).sum(-2) / nk
        var2 = (resp * (xs - mu.unsqueeze(-2)) ** 2).sum(-2) / nk + 1e-12
        pi = nk / n
    resp = torch.softmax(log_joint(), dim=-1)
    top = (mu[..., 1] >= mu[..., 0]).unsqueeze(-1)
    return torch.where(top, resp[..., 1], resp[..., 0])


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


def pack_rows(x: torch.Tensor) -> torch.Tensor:
    """bool (B, h, w) -> int64 (B, h, ceil(w / 64)): bit c % 64 of word c // 64 is column c (bits >= w are 0)."""
    B, h, w = x.shape
    nw = -(-w // 64)
    bits = F.pad(x, (0, 64 * nw - w)).reshape(B, h, nw, 64).long()
    weights = torch.ones(64, dtype=torch.long, device=x.device) << torch.arange(64, device=x.device)
    return (bits * weights).sum(-1)  # distinct powers of two: the sum is the bitwise OR (2^63 wraps to the sign bit)


def unpack_rows(words: torch.Tensor, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int64 (B, h, nw) -> bool (B, h, w)."""
    shifts = torch.arange(64, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:2], -1)[..., :w].bool()


def _shift_up(x: torch.Tensor, d: int) -> torch.Tensor:
    """Packed rows moved d (< 64) columns towards higher columns, zero filled."""
    out = x << d
    if x.shape[-1] > 1:
        out[..., 1:] |= (x[..., :-1] >> (64 - d)) & ((1 << d) - 1)
    return out


def _shift_down(x: torch.Tensor, d: int) -> torch.Tensor:
    """Packed rows moved d (< 64) columns towards lower columns, zero filled (a logical shift)."""
    out = (x >> d) & ((1 << (64 - d)) - 1)
    if x.shape[-1] > 1:
        out[..., :-1] |= (x[..., 1:] & ((1 << d) - 1)) << (64 - d)
    return out


def _dilate_packed(x: torch.Tensor, width_mask: torch.Tensor, r: int = 1) -> torch.Tensor:
    """Binary dilation of packed rows (B, h, nw) by a (2r + 1) square; pixels outside the image count as 0."""
    rows = x
    for d in range(1, r + 1):
        rows = rows | _shift_up(x, d) | _shift_down(x, d)
    rows = F.pad(rows & width_mask, (0, 0, r, r))
    h = x.shape[1]
    out = rows[:, 0:h]
    for d in range(1, 2 * r + 1):
        out = out | rows[:, d : d + h]
    return out


def _width_mask(w: int, device: torch.device) -> torch.Tensor:
    return pack_rows(torch.ones(1, 1, w, dtype=torch.bool, device=device))


def dilate(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Binary dilation of a bool (B, 1, h, w) by a ``kernel`` x ``kernel`` square (odd, < 128); pixels beyond the
    border count as 0 (as ``max_pool2d`` padding). Runs on rows packed 64 pixels to an int64 word."""
    w = x.shape[-1]
    return unpack_rows(_dilate_packed(pack_rows(x[:, 0]), _width_mask(w, x.device), kernel // 2), w)[:, None]


def erode(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Binary erosion of a bool (B, 1, h, w) by a ``kernel`` x ``kernel`` square; pixels beyond the border count as
    1 (no erosion from the border, as ``-max_pool2d(-x)``)."""
    w = x.shape[-1]
    return unpack_rows(_erode_packed(pack_rows(x[:, 0]), _width_mask(w, x.device), kernel // 2), w)[:, None]


def _erode_packed(x: torch.Tensor, width_mask: torch.Tensor, r: int = 1) -> torch.Tensor:
    return ~_dilate_packed(~x & width_mask, width_mask, r) & width_mask


def fill_from_border(dark: torch.Tensor, iterations: int) -> torch.Tensor:
    """dark: bool (B, 1, h, w) -> the dark pixels 8-connected to the image border through dark pixels by a path of
    at most ``iterations`` steps (geodesic dilations of the dark border pixels within ``dark``)."""
    w = dark.shape[-1]
    return unpack_rows(_fill_packed(pack_rows(dark[:, 0]), w, iterations), w)[:, None]


def _fill_packed(dark: torch.Tensor, w: int, iterations: int) -> torch.Tensor:
    """:func:`fill_from_border` on packed rows: dark (B, h, nw) int64 -> reached (B, h, nw). A geodesic step is a
    handful of ops on B x h x nw words: tensors too small for the thread pool, so cheap under any machine load."""
    frame = torch.ones(1, dark.shape[1], w, dtype=torch.bool, device=dark.device)
    frame[:, 1:-1, 1:-1] = False
    reached = pack_rows(frame) & dark
    if dark.shape[-1] > 1:  # rows wider than one word: the general dilation (carries between words)
        m = _width_mask(w, dark.device)
        for _ in range(iterations):
            reached = _dilate_packed(reached, m) & dark
        return reached
    for _ in range(iterations):  # one word per row: 8 ops per step. The arithmetic >> may keep bit 63, which x
        rows = reached | (reached << 1) | (reached >> 1)  # itself holds; bits beyond the image die in `& dark`
        step = rows.clone()
        step[:, 1:] |= rows[:, :-1]
        step[:, :-1] |= rows[:, 1:]
        reached = step & dark
    return reached


def body_masks(images: torch.Tensor, *, resolution: int = 64, open_kernel: int = 3) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, 1, H, W) float {0, 1}: NOT (dark pixels connected to the border), opened.

    Computed at ``resolution`` x ``resolution`` (area downsampling, each image min-max scaled to [0, 1]) and
    upsampled (nearest). Dark = at or below the image's Otsu threshold; the flood fill from the border runs
    ``2 * resolution`` geodesic dilations (fixed count: no data-dependent loop), so dark regions enclosed by the
    body (the lungs) are holes and get filled. The opening ignores the image border (as ``max_pool2d`` padding).
    The morphology runs on rows packed into int64 words (:func:`pack_rows`)."""
    H, W = images.shape[-2:]
    x = images.float().mean(1, keepdim=True)
    x = F.interpolate(x, size=(resolution, resolution), mode="area")
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    t = otsu_thresholds(x.flatten(1)).reshape(-1, 1, 1, 1)
    m = _width_mask(resolution, x.device)
    body = ~_fill_packed(pack_rows((x <= t)[:, 0]), resolution, 2 * resolution) & m
    r = open_kernel // 2
    body = _dilate_packed(_erode_packed(body, m, r), m, r)  # opening
    return F.interpolate(unpack_rows(body, resolution)[:, None].float(), size=(H, W), mode="nearest")


def bilateral_binary(
    mask: torch.Tensor, *, diameter: int = 5, sigma_space: float = 1.0, sigma_color: float = 1.0
) -> torch.Tensor:
    """Bilateral filter of a {0, 1} mask (B, 1, H, W), re-binarised at 0.5.

    out(p) = sum_q w_s(p, q) w_r(p, q) m(q) / sum_q w_s w_r over the (2 r + 1) x (2 r + 1) window, r = diameter // 2,
    w_s = exp(-||p - q||^2 / (2 sigma_space^2)), w_r = exp(-(m(p) - m(q))^2 / (2 sigma_color^2)); replicate padding.
    For a binary mask w_r is 1 (same value) or c = exp(-1 / (2 sigma_color^2)), so with S1 = sum_q w_s m(q) and
    S0 = sum_q w_s (1 - m(q)): out(p) > 0.5 <=> S1 > c S0 where m(p) = 1, and c S1 > S0 where m(p) = 0 - exact,
    with S1 one separable Gaussian filter."""
    r = diameter // 2
    H, W = mask.shape[-2:]
    g = [math.exp(-(d * d) / (2 * sigma_space**2)) for d in range(-r, r + 1)]
    padded = F.pad(mask, (r, r, r, r), mode="replicate")
    rows = sum(g[d] * padded[..., :, d : d + W] for d in range(len(g)))  # separable: shifted sums beat conv2d
    s1 = sum(g[d] * rows[..., d : d + H, :] for d in range(len(g)))
    s0 = sum(g) ** 2 - s1
    c = math.exp(-1 / (2 * sigma_color**2))
    return torch.where(mask > 0.5, s1 > c * s0, c * s1 > s0).to(mask.dtype)
