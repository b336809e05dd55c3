"""Vectorised rendering of latent cases into chest-like grayscale images, with per-instance finding masks.

Image model (float32 in [0, 1], bright = dense): dark background, a soft-tissue body ellipse, dark lung fields with
vessel markings and curved ribs, a bright mediastinum/spine and heart, then one additive layer per visible finding,
exposure scaling and Gaussian noise. Each finding kind has its own signature at its location:

==================  ============================================================================================
consolidation       homogeneous dense opacity (soft ellipse) in the zone
pneumonia           patchy (thresholded low-frequency noise) opacity in the zone
infiltration        faint, wide, mottled haze
nodule / mass       small / larger round dense spot
atelectasis         thin rotated linear band
effusion            basal opacity under a meniscus rising laterally
pneumothorax        dark rim without markings at the apex / lateral edge, thin bright visceral pleural line
cardiomegaly        enlarged heart ellipse
edema               bilateral perihilar haze
emphysema           hyperlucent lungs with sparse markings
fibrosis            reticular lines in the lower periphery
pleural_thickening  dense band along the lateral chest wall
hernia              retrocardiac air bubble with bright rim and air-fluid level
covid19             bilateral peripheral lower-zone ground glass
foreign_object      near-white rectangle / ellipse / polygon
fracture            rib callus crossed by a dark gap
==================  ============================================================================================

Every texture comes from the finding's own seed, the base from the case seed: removing a finding leaves the rest of
the image bit-identical (used by the learnability test). A 256 x 256 image takes a few milliseconds.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as _poly_fill

from .latent import Anatomy, Case, Finding, Instance

_F = np.float32


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre normalised coordinates U (1, w) and V (h, 1)."""
    return ((np.arange(w, dtype=_F) + 0.5) / w)[None, :], ((np.arange(h, dtype=_F) + 0.5) / h)[:, None]


def _r2(U, V, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    """Normalised squared elliptic radius (h, w): < 1 inside the ellipse."""
    du, dv = U - _F(cx), V - _F(cy)
    if angle:
        c, s = _F(np.cos(angle)), _F(np.sin(angle))
        du, dv = du * c + dv * s, dv * c - du * s
    return (du / _F(max(rx, 1e-6))) ** 2 + (dv / _F(max(ry, 1e-6))) ** 2


def _soft(r2: np.ndarray, k: float) -> np.ndarray:
    """Soft inside-indicator of an ellipse: 1 deep inside, ramps to 0 at the border (sharper for larger k)."""
    return np.clip((1 - r2) * _F(k), 0, 1)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1], (h, w): bilinear upsampling of a (cells+1)^2 random grid."""
    g = rng.random((cells + 1, cells + 1), dtype=_F)
    y, x = np.linspace(0, cells, h, dtype=_F), np.linspace(0, cells, w, dtype=_F)
    y0, x0 = np.minimum(y.astype(int), cells - 1), np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    gx = g[:, x0] * (1 - fx) + g[:, x0 + 1] * fx  # (cells + 1, w)
    return gx[y0] * (1 - fy) + gx[y0 + 1] * fy


def lung_r2(anat: Anatomy, U, V) -> tuple[np.ndarray, np.ndarray]:
    """Squared elliptic radius of the right (image-left) and left lung."""
    return (_r2(U, V, anat.lung_cx[0], anat.lung_cy, anat.lung_rx, anat.lung_ry),
            _r2(U, V, anat.lung_cx[1], anat.lung_cy, anat.lung_rx, anat.lung_ry))


def _object_mask(inst: Instance, U, V, h: int, w: int) -> np.ndarray:
    if inst.shape == "rect":
        return (np.abs(U - inst.cx) <= inst.rx) & (np.abs(V - inst.cy) <= inst.ry)
    if inst.shape == "polygon":
        m = np.zeros((h, w), bool)
        pts = np.asarray(inst.points).reshape(-1, 2)
        rr, cc = _poly_fill(pts[:, 1] * h - 0.5, pts[:, 0] * w - 0.5, (h, w))
        m[rr, cc] = True
        return m
    return _r2(U, V, inst.cx, inst.cy, inst.rx, inst.ry) <= 1


def _collapsed_r2(anat: Anatomy, inst: Instance, U, V) -> np.ndarray:
    """r2 of the collapsed lung of a pneumothorax instance (lung shrunk by ``inst.angle`` towards the hilum)."""
    side = "right" if inst.cx < 0.5 else "left"
    f = inst.angle
    cx = anat.lung_centre(side) - anat.lateral_sign(side) * f * anat.lung_rx
    return _r2(U, V, cx, anat.lung_cy + f * anat.lung_ry, anat.lung_rx * (1 - f), anat.lung_ry * (1 - f))


def instance_masks(case: Case, f: Finding, h: int, w: int) -> list[np.ndarray]:
    """Boolean (h, w) mask of every instance of finding ``f`` in a (h, w) rendering of ``case``."""
    U, V = _grid(h, w)
    anat = case.anatomy
    lr, ll = lung_r2(anat, U, V)
    lung = (lr < 1) | (ll < 1)
    out = []
    for inst in f.instances:
        if f.kind == "foreign_object":
            m = _object_mask(inst, U, V, h, w)
        elif f.kind == "effusion":
            m = _effusion_region(anat, inst, U, V) > 0.5
        elif f.kind == "pneumothorax":
            m = (_r2(U, V, inst.cx, inst.cy, inst.rx, inst.ry) < 1) & lung & (_collapsed_r2(anat, inst, U, V) >= 1)
        elif f.kind in ("cardiomegaly", "hernia", "fracture", "pleural_thickening"):
            m = _r2(U, V, inst.cx, inst.cy, inst.rx, inst.ry, inst.angle) < 1
        else:
            m = (_r2(U, V, inst.cx, inst.cy, inst.rx, inst.ry, inst.angle) < 1) & lung
        out.append(m)
    return out


def _effusion_region(anat: Anatomy, inst: Instance, U, V) -> np.ndarray:
    """Soft fluid region of one hemithorax: below a meniscus that rises towards the lateral wall."""
    side = "right" if inst.cx < 0.5 else "left"
    x = (U - inst.cx) / _F(inst.rx) * _F(anat.lateral_sign(side))  # -1 medial .. +1 lateral
    level = inst.cy - _F(0.05) * np.clip(x + 1, 0, 2) ** 2
    inside = _soft(_r2(U, V, inst.cx, anat.lung_cy, anat.lung_rx, anat.lung_ry), 6)
    return np.clip((V - level) * _F(60), 0, 1) * inside


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel bounding box (x1, y1, x2, y2), x2/y2 exclusive, of a boolean mask; None if empty."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(ys) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _layer(case: Case, f: Finding, U, V, lung: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(additive density, markings suppression in [0, 1]) of one visible finding, both (h, w) float32."""
    anat, rng = case.anatomy, np.random.default_rng(f.seed)
    amp = _F(f.strength * (0.7 + 0.15 * f.severity))
    add = np.zeros((h, w), _F)
    sup = np.zeros((h, w), _F)
    k = f.kind
    for inst in f.instances:
        r2 = _r2(U, V, inst.cx, inst.cy, inst.rx, inst.ry, inst.angle)
        if k == "consolidation":
            add += 0.38 * _soft(r2, 3) * (0.85 + 0.15 * _lowfreq(rng, h, w, 12)) * lung
        elif k == "pneumonia":
            patch = np.clip((_lowfreq(rng, h, w, 14) - 0.35) * 4, 0, 1)
            add += 0.42 * _soft(r2, 2) * patch * lung
        elif k == "infiltration":
            add += 0.26 * _soft(r2, 1.5) * (0.4 + 0.6 * _lowfreq(rng, h, w, 30)) * lung
        elif k in ("nodule", "mass"):
            add += (0.45 if k == "nodule" else 0.5) * _soft(r2, 4)
        elif k == "atelectasis":
            add += 0.4 * _soft(r2, 2) * lung
        elif k == "effusion":
            add += 0.5 * _effusion_region(anat, inst, U, V)
            sup += _effusion_region(anat, inst, U, V)
        elif k == "pneumothorax":
            cr2 = _collapsed_r2(anat, inst, U, V)
            m = (r2 < 1) & lung & (cr2 >= 1)
            add -= 0.14 * m
            sup += m
            add += 0.3 * ((np.abs(cr2 - 1) < 0.08) & (r2 < 1) & lung)
        elif k == "cardiomegaly":
            normal = _soft(_r2(U, V, anat.heart_cx, anat.heart_cy, anat.heart_rx, anat.heart_ry), 6)
            add += 0.3 * np.clip(_soft(r2, 6) - normal, 0, 1)
        elif k == "edema":
            add += 0.24 * np.exp(-r2) * lung
        elif k == "emphysema":
            add -= 0.1 * _soft(r2, 6)
            sup += 0.8 * _soft(r2, 6)
        elif k == "fibrosis":
            warp = _lowfreq(rng, h, w, 8) * 3
            net = (np.abs(np.sin(U * 90 + warp)) < 0.25) | (np.abs(np.sin(V * 90 + warp)) < 0.25)
            add += 0.3 * net * _soft(r2, 2) * lung
        elif k == "pleural_thickening":
            add += 0.4 * _soft(r2, 3)
        elif k == "hernia":
            add += -0.35 * (r2 < 0.8) * (V < inst.cy) + 0.1 * (r2 < 0.8) * (V >= inst.cy)
            add += 0.3 * ((r2 >= 0.8) & (r2 < 1.1))
        elif k == "covid19":
            add += 0.26 * _soft(r2, 1.5) * (0.5 + 0.5 * _lowfreq(rng, h, w, 20)) * lung
        elif k == "foreign_object":
            add += 2.0 * _object_mask(inst, U, V, h, w)  # saturates to white after clipping
        elif k == "fracture":
            add += 0.3 * _soft(r2, 2) - 0.3 * ((np.abs(U - inst.cx) < inst.rx * 0.2) & (r2 < 1))
    return add * amp, np.clip(sup, 0, 1)


def _frontal_base(case: Case, U, V, h: int, w: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(density without markings, markings layer, soft lung indicator) of a normal frontal chest."""
    a = case.anatomy
    body = _soft(_r2(U, V, 0.5, 0.56, a.body_rx, a.body_ry), 10)
    img = 0.05 + 0.48 * body + 0.14 * body * (np.abs(U - 0.5) < 0.055)
    lr, ll = lung_r2(a, U, V)
    lung = np.maximum(_soft(lr, 6), _soft(ll, 6))
    img = img - 0.4 * lung
    y = V + a.rib_curve * (U - 0.5) ** 2
    ribs = np.clip((np.sin(2 * np.pi * (y / a.rib_spacing + a.rib_phase)) - 0.5) * 4, 0, 1)
    img = img + _F(0.1 * a.bone) * ribs * body
    img = img + 0.3 * _soft(_r2(U, V, a.heart_cx, a.heart_cy, a.heart_rx, a.heart_ry), 6)
    hil = np.minimum(np.abs(U - a.lung_cx[0] - a.lung_rx * 0.5), np.abs(U - a.lung_cx[1] + a.lung_rx * 0.5))
    veins = np.clip((_lowfreq(rng, h, w, 28) - 0.55) * 5, 0, 1) * np.exp(-hil * 8)
    return img, 0.12 * veins * lung, lung


def _lateral_base(case: Case, U, V) -> np.ndarray:
    a = case.anatomy
    body = _soft(_r2(U, V, 0.5, 0.55, 0.42, a.body_ry), 10)
    img = 0.05 + 0.5 * body - 0.38 * _soft(_r2(U, V, 0.5, a.lung_cy, 0.3, a.lung_ry * 1.05), 5)
    img = img + 0.4 * _soft(_r2(U, V, 0.38, a.heart_cy, a.heart_rx * 1.3, a.heart_ry * 1.2), 5)
    return img + 0.3 * body * (np.abs(U - 0.8) < 0.05)


def render(case: Case, h: int, w: int) -> np.ndarray:
    """Render ``case`` as a float32 (h, w) image in [0, 1]. Lateral views show anatomy only."""
    U, V = _grid(h, w)
    rng = np.random.default_rng(case.seed)
    if case.view == "LATERAL":
        img = _lateral_base(case, U, V)
    else:
        img, veins, lung = _frontal_base(case, U, V, h, w, rng)
        lr, ll = lung_r2(case.anatomy, U, V)
        hard = (lr < 1) | (ll < 1)
        sup = np.zeros((h, w), _F)
        for f in case.visible():
            add, s = _layer(case, f, U, V, hard, h, w)
            img = img + add
            sup = np.maximum(sup, s)
        img = img + veins * (1 - sup)
    noise = np.random.default_rng([case.seed, h, w]).standard_normal((h, w), dtype=_F)
    img = img * _F(case.anatomy.exposure) + noise * _F(case.anatomy.noise)
    return np.clip(img, 0, 1).astype(_F)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by rounding (no wrap-around)."""
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
