"""Drawing findings (kind-specific geometry) and whole cases from per-dataset prevalence profiles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .latent import (
    KINDS,
    SIDES,
    ZONES,
    Anatomy,
    Case,
    Finding,
    Instance,
    _blobs,
    _foreign_object,
    _sides,
    sample_anatomy,
)

#: default zone per kind (None = drawn uniformly)
_DEFAULT_ZONE = {"effusion": "lower", "pneumothorax": "upper", "atelectasis": "lower", "covid19": "lower",
                 "fibrosis": "lower", "edema": "middle", "cardiomegaly": "middle", "hernia": "lower",
                 "emphysema": "upper"}
_BILATERAL = {"edema", "emphysema", "covid19", "cardiomegaly", "hernia", "foreign_object"}


def _geometry(rng: np.random.Generator, anat: Anatomy, kind: str, side: str, zone: str, sev: int,
              n: int) -> tuple[Instance, ...]:
    """The instances of one finding (normalised coords); ``n`` = instances per side where that makes sense."""
    s = 0.75 + 0.25 * sev
    if kind in ("consolidation", "pneumonia", "infiltration"):
        return _blobs(rng, anat, side, zone, n, {"infiltration": 0.075}.get(kind, 0.06) * s, 1.2)
    if kind == "nodule":
        return _blobs(rng, anat, side, zone, n, 0.016 + 0.003 * sev, 1.0, 0.6)
    if kind == "mass":
        return _blobs(rng, anat, side, zone, 1, 0.045 + 0.012 * sev, 1.0, 0.4)
    if kind == "atelectasis":
        return tuple(Instance(b.cx, b.cy, 0.08 * s, 0.014 * s, b.angle * 0.5)
                     for b in _blobs(rng, anat, side, zone, 1, 0.05, 1.0, 0.3))
    if kind == "effusion":  # cy = fluid level, rx = lung width
        base = anat.lung_cy + anat.lung_ry
        return tuple(Instance(anat.lung_centre(x), base - (0.08 + 0.05 * sev) * anat.lung_ry * 2.2, anat.lung_rx,
                              0.0, 0.0) for x in _sides(side))
    if kind == "pneumothorax":  # crescent pieces along the apex / lateral edge; angle = collapse fraction
        out = []
        for x in _sides(side):
            lat = anat.lateral_sign(x)
            for i in range(n):
                cy = anat.lung_cy - anat.lung_ry * (0.75 - 0.45 * i)
                out.append(Instance(anat.lung_centre(x) + lat * anat.lung_rx * (0.35 + 0.2 * i), cy,
                                    anat.lung_rx * 0.9, anat.lung_ry * 0.35, 0.15 + 0.07 * sev))
        return tuple(out)
    if kind == "cardiomegaly":
        f = 1.22 + 0.1 * sev
        return (Instance(anat.heart_cx, anat.heart_cy, anat.heart_rx * f, anat.heart_ry * (0.5 + 0.5 * f)),)
    if kind == "edema":
        return tuple(Instance(anat.lung_centre(x) - anat.lateral_sign(x) * 0.35 * anat.lung_rx, anat.lung_cy,
                              0.09 * s, 0.15 * s) for x in ("right", "left"))
    if kind == "emphysema":
        return tuple(Instance(anat.lung_centre(x), anat.lung_cy, anat.lung_rx, anat.lung_ry) for x in ("right", "left"))
    if kind in ("fibrosis", "covid19"):
        sides = ("right", "left") if kind == "covid19" else _sides(side)
        return tuple(Instance(anat.lung_centre(x) + anat.lateral_sign(x) * 0.45 * anat.lung_rx, anat.zone_v(zone),
                              0.07 * s, 0.1 * s) for x in sides)
    if kind == "pleural_thickening":
        return tuple(Instance(anat.lung_centre(x) + anat.lateral_sign(x) * 0.93 * anat.lung_rx, anat.zone_v(zone),
                              0.018 * s, 0.11) for x in _sides(side))
    if kind == "hernia":
        r = 0.032 + 0.008 * sev
        return (Instance(anat.heart_cx + 0.02, anat.heart_cy + 0.02, r, r * 0.85),)
    if kind == "fracture":
        return tuple(Instance(anat.lung_centre(x) + anat.lateral_sign(x) * 0.85 * anat.lung_rx, anat.zone_v(zone),
                              0.018, 0.012) for x in _sides(side))
    if kind == "foreign_object":
        return tuple(_foreign_object(rng, anat) for _ in range(n))
    raise ValueError(f"unknown finding kind {kind!r}; expected one of {KINDS}")


def make_finding(rng: np.random.Generator, anat: Anatomy, kind: str, *, side: str | None = None,
                 zone: str | None = None, severity: int | None = None, certainty: str = "present",
                 n: int = 1) -> Finding:
    """A finding of ``kind``; unspecified side/zone/severity are drawn (kind-specific defaults)."""
    if side is None:
        side = "bilateral" if kind in _BILATERAL else SIDES[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    zone = zone or _DEFAULT_ZONE.get(kind) or ZONES[int(rng.integers(3))]
    severity = int(severity or rng.integers(1, 4))
    inst = _geometry(rng, anat, kind, side, zone, severity, n)
    return Finding(kind, side, zone, severity, certainty, inst, int(rng.integers(2**31)))


#: prevalence of each kind per dataset profile (independent Bernoulli draws)
PROFILES: dict[str, dict[str, float]] = {
    "report": {"atelectasis": 0.14, "cardiomegaly": 0.12, "effusion": 0.14, "consolidation": 0.07,
               "pneumonia": 0.08, "edema": 0.08, "pneumothorax": 0.05, "nodule": 0.05, "mass": 0.03,
               "fracture": 0.03, "pleural_thickening": 0.03, "foreign_object": 0.12, "emphysema": 0.03,
               "fibrosis": 0.02, "hernia": 0.01},
    # every NIH label at >= 6%: the demo's ~500 training images then hold >= 20 positives of each (issue 10)
    "nih": {"atelectasis": 0.1, "cardiomegaly": 0.07, "effusion": 0.1, "infiltration": 0.12, "mass": 0.06,
            "nodule": 0.07, "pneumonia": 0.06, "pneumothorax": 0.06, "consolidation": 0.06, "edema": 0.06,
            "emphysema": 0.06, "fibrosis": 0.06, "pleural_thickening": 0.06, "hernia": 0.06},
    "distractor": {"atelectasis": 0.05, "effusion": 0.05, "nodule": 0.04, "cardiomegaly": 0.05,
                   "foreign_object": 0.08},
}


def sample_case(rng: np.random.Generator, *, profile: Mapping[str, float] | None = None,
                forced: Sequence[str] = (), uncertain_p: float = 0.0, negations: int = 0,
                anatomy: Anatomy | None = None, view: str = "PA") -> Case:
    """A case with findings drawn from ``profile`` plus the ``forced`` kinds (always present).

    ``uncertain_p``: probability a drawn (not forced) finding is uncertain; ``negations``: up to that many absent kinds
    are added as "absent" (mentioned negative) findings.
    """
    anat = anatomy or sample_anatomy(rng)
    kinds = list(forced)
    for kind, p in (profile or {}).items():
        if kind not in kinds and rng.random() < p:
            kinds.append(kind)
    found = []
    for k in kinds:
        doubt = k not in forced and k != "foreign_object" and rng.random() < uncertain_p
        cert = "uncertain" if doubt else "present"
        found.append(make_finding(rng, anat, k, certainty=cert, n=2 if k == "foreign_object" else 1))
    if negations:
        pool = [k for k in ("effusion", "pneumothorax", "consolidation", "edema", "pneumonia") if k not in kinds]
        for k in rng.permutation(pool)[: int(rng.integers(0, negations + 1))]:
            found.append(make_finding(rng, anat, str(k), certainty="absent"))
    return Case(anat, tuple(found), view, int(rng.integers(2**31)))
