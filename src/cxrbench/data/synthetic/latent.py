"""Seeded latent cases: the ground truth every synthetic dataset is written from.

A :class:`Case` is one chest radiograph before rendering: an :class:`Anatomy` (lung fields, heart, body outline, rib
pattern, noise) and a tuple of :class:`Finding` (kind, side, zone, severity, certainty and the geometry of its
instances). All geometry is in *normalised* image coordinates ``u = x / W``, ``v = y / H`` in [0, 1], so one case can be
rendered at any size; its pixel masks and boxes come from :func:`cxrbench.data.synthetic.render.finding_masks` for the
written size. Image convention: PA view, the patient's RIGHT lung is on the image LEFT (small ``u``).

Randomness: every draw comes from ``case_rng(seed, dataset, index, stream)``, a numpy Generator seeded from the tuple
(seed, crc32(dataset), index, stream), so the output of a dataset never depends on call order or on other datasets.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

#: finding kinds; together they cover the 25 diseases of the protocol (NIH 14, CheXpert 5, RSNA pneumonia,
#: SIIM pneumothorax, COVIDx normal/pneumonia/COVID-19 (normal = no finding), Object-CXR foreign object)
KINDS = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
    "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia", "covid19", "foreign_object",
    "fracture",
)
SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower")
CERTAINTIES = ("present", "uncertain", "absent")  # "absent" = mentioned as negative ("No pleural effusion.")
#: rendered strength per certainty: an uncertain finding is drawn faintly, an absent one not at all
STRENGTH = {"present": 1.0, "uncertain": 0.5, "absent": 0.0}
OBJECT_SHAPES = ("rect", "ellipse", "polygon")


def case_rng(seed: int, dataset: str, index: int, stream: int = 0) -> np.random.Generator:
    """The numpy Generator of item ``index`` of ``dataset`` for a global ``seed`` (all non-negative ints)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(dataset.encode()), int(index), stream]))


@dataclass(frozen=True)
class Anatomy:
    """Normal chest geometry (normalised coords). ``lung_cx`` = (right lung, left lung) centre u."""

    lung_cx: tuple[float, float]
    lung_cy: float
    lung_rx: float
    lung_ry: float
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    body_rx: float
    body_ry: float
    rib_spacing: float
    rib_phase: float
    rib_curve: float
    noise: float
    exposure: float
    seed: int  # texture seed (vessel markings, noise)
    bone: float = 1.0  # rib contrast multiplier (the age signal: :func:`with_demographics`)

    def lung_centre(self, side: str) -> float:
        """u of the centre of the patient's ``side`` lung ("right" is on the image left)."""
        return self.lung_cx[0] if side == "right" else self.lung_cx[1]

    def lateral_sign(self, side: str) -> float:
        """+1 if the lateral (outer) edge of the ``side`` lung is towards larger u, else -1."""
        return -1.0 if side == "right" else 1.0

    def zone_v(self, zone: str) -> float:
        """v of the centre of a lung zone (upper, middle, lower third of the lung height)."""
        top = self.lung_cy - self.lung_ry
        return top + (2 * ZONES.index(zone) + 1) / 6 * 2 * self.lung_ry


@dataclass(frozen=True)
class Instance:
    """One connected piece of a finding: an ellipse (centre, radii, angle in radians) or, for foreign objects, a
    rectangle / ellipse (its bounding box is the ellipse's) / polygon (``points`` = u1, v1, u2, v2, ...)."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0
    shape: str = "ellipse"
    points: tuple[float, ...] = ()


@dataclass(frozen=True)
class Finding:
    """A finding of a case. ``severity`` 1 (mild/small) .. 3 (severe/large); ``seed`` drives its texture."""

    kind: str
    side: str
    zone: str
    severity: int
    certainty: str
    instances: tuple[Instance, ...]
    seed: int

    @property
    def strength(self) -> float:
        return STRENGTH[self.certainty]


@dataclass(frozen=True)
class Case:
    """One latent image: anatomy, findings, view (PA, AP, LATERAL) and a noise seed."""

    anatomy: Anatomy
    findings: tuple[Finding, ...]
    view: str = "PA"
    seed: int = 0

    def visible(self) -> tuple[Finding, ...]:
        """Findings drawn in the image (present or uncertain)."""
        return tuple(f for f in self.findings if f.strength > 0)

    def has(self, kind: str, certainty: str = "present") -> bool:
        return any(f.kind == kind and f.certainty == certainty for f in self.findings)

    def without(self, kind: str) -> Case:
        """The same case with every finding of ``kind`` removed (for learnability checks)."""
        return replace(self, findings=tuple(f for f in self.findings if f.kind != kind))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A normal chest with mild jitter of every landmark."""
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    rx, ry = 0.15 + j(0.01), 0.28 + j(0.015)
    return Anatomy(
        lung_cx=(0.32 + j(0.01), 0.68 + j(0.01)), lung_cy=0.47 + j(0.015), lung_rx=rx, lung_ry=ry,
        heart_cx=0.55 + j(0.01), heart_cy=0.63 + j(0.01), heart_rx=0.11 + j(0.006), heart_ry=0.09 + j(0.005),
        body_rx=0.44 + j(0.015), body_ry=0.52 + j(0.015), rib_spacing=0.075 + j(0.005),
        rib_phase=float(rng.uniform(0, 1)), rib_curve=0.5 + j(0.05), noise=float(rng.uniform(0.012, 0.03)),
        exposure=float(rng.uniform(0.9, 1.1)), seed=int(rng.integers(2**31)),
    )


#: the demographic signal of the CheXpert / NIH generators: the body outline's half-width shifts by
#: +-SEX_BODY_SHIFT (male wider, female narrower; the landmark jitter's sd is 0.015), and the rib contrast falls
#: linearly with age from BONE_YOUNG at 0 years to BONE_OLD at BONE_AGE years (bone density loss)
SEX_BODY_SHIFT, BONE_YOUNG, BONE_OLD, BONE_AGE = 0.018, 1.5, 0.5, 90.0


def with_demographics(anat: Anatomy, female: bool, age: float) -> Anatomy:
    """``anat`` with the patient's sex and age drawn in: a narrower (female) or wider (male) body outline and a
    rib contrast that fades with age. Lungs, heart and findings keep their geometry, so other labels' signal stays;
    no random draw (the case streams are unchanged)."""
    shift = -SEX_BODY_SHIFT if female else SEX_BODY_SHIFT
    bone = BONE_YOUNG + (BONE_OLD - BONE_YOUNG) * min(max(float(age), 0.0), BONE_AGE) / BONE_AGE
    return replace(anat, body_rx=anat.body_rx + shift, bone=bone)


def _lung_point(rng, anat: Anatomy, side: str, zone: str, spread: float = 0.45) -> tuple[float, float]:
    """A random point inside the ``side`` lung in ``zone``."""
    cx = anat.lung_centre(side) + float(rng.uniform(-spread, spread)) * anat.lung_rx
    cy = anat.zone_v(zone) + float(rng.uniform(-0.3, 0.3)) * anat.lung_ry / 3
    return cx, cy


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side == "bilateral" else (side,)


def _blobs(rng, anat, side, zone, n, r, aspect=1.0, spread=0.45) -> tuple[Instance, ...]:
    """``n`` ellipses per side of mean radius ``r`` placed in ``zone``."""
    out = []
    for s in _sides(side):
        for _ in range(n):
            cx, cy = _lung_point(rng, anat, s, zone, spread)
            rr = r * float(rng.uniform(0.8, 1.2))
            out.append(Instance(cx, cy, rr, rr * aspect * float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.5, 0.5))))
    return tuple(out)


def _foreign_object(rng, anat: Anatomy) -> Instance:
    """A bright object (rect / ellipse / polygon) anywhere over the thorax."""
    shape = OBJECT_SHAPES[int(rng.integers(3))]
    cx, cy = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.85))
    rx, ry = float(rng.uniform(0.015, 0.05)), float(rng.uniform(0.015, 0.05))
    pts: tuple[float, ...] = ()
    if shape == "polygon":
        n = int(rng.integers(4, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.6, 1.0, n)
        pts = tuple(float(a) for uv in zip(cx + rx * rad * np.cos(ang), cy + ry * rad * np.sin(ang), strict=True)
                    for a in uv)
    return Instance(cx, cy, rx, ry, 0.0, shape, pts)
