"""COVIDx (9A) and Object-CXR in their download layouts."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from ._io import hex_id, save_image, write_text
from .findings import make_finding
from .latent import Case, Instance, case_rng, sample_anatomy
from .render import render, to_uint8

COVIDX_CLASSES = ("normal", "pneumonia", "COVID-19")
_COVID_SOURCES = ("cohen", "ricord", "bimcv", "sirm", "actmed")


def _covidx_case(rng, cls: str) -> Case:
    anat = sample_anatomy(rng)
    if cls == "normal":
        return Case(anat, (), "PA", int(rng.integers(2**31)))
    kind = "pneumonia" if cls == "pneumonia" else "covid19"
    f = make_finding(rng, anat, kind, severity=int(rng.integers(2, 4)))
    return Case(anat, (f,), "AP", int(rng.integers(2**31)))


def _held_out(n: int, n_test: int | None, default: int, name: str) -> int:
    """Images of the official test (dev) list: ``default`` unless ``n_test`` (``synthetic.test_sizes``) is given."""
    if n_test is None:
        return default
    if not 0 < n_test < n:
        raise ValueError(f"synthetic.test_sizes.{name} = {n_test}: expected 1..{n - 1} (synthetic.sizes.{name} = {n})")
    return n_test


def write_covidx(out: Path, seed: int, n: int, image_size: int, n_test: int | None = None) -> dict:
    """train/ and test/ images (png/jpg/jpeg, mixed sizes, some RGB) and the two 4-field label files."""
    n_test = _held_out(n, n_test, max(1, min(max(12, n // 8), n // 4)), "covidx")
    lines: dict[str, list[str]] = {"train": [], "test": []}
    counts, planted, patient = Counter(), set(), ""
    for i in range(n):
        split = "test" if i >= n - n_test else "train"
        rng = case_rng(seed, "covidx", i)
        cls = COVIDX_CLASSES[i % 3] if i < 9 else COVIDX_CLASSES[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
        case = _covidx_case(rng, cls)
        if not patient or rng.random() < 0.75:  # a quarter of the images share the previous patient
            patient = f"ANON{hex_id(rng, 6).upper()}" if rng.random() < 0.5 else str(int(rng.integers(1000, 99999)))
        if patient.startswith("ANON"):
            planted.add(patient)
        ext = (".png", ".jpg", ".jpeg")[i % 3]
        source = "rsna" if cls != "COVID-19" else _COVID_SOURCES[int(rng.integers(len(_COVID_SOURCES)))]
        name = f"{source}-{hex_id(rng, 12)}{ext}"
        h, w = (int(round(image_size * float(rng.uniform(0.75, 1.25)))) for _ in range(2))
        img8 = to_uint8(render(case, h, w))
        if i % 5 == 2:
            img8 = np.repeat(img8[:, :, None], 3, axis=2)
        save_image(out / split / name, img8)
        lines[split].append(f"{patient} {name} {cls} {source}")
        counts[f"{split}/{cls}"] += 1
    for split, ls in lines.items():
        write_text(out / f"{split}_COVIDx9A.txt", "".join(x + "\n" for x in ls))
    return {"train": len(lines["train"]), "test": len(lines["test"]), "classes": dict(sorted(counts.items())),
            "planted_phi": sorted(planted)}


def annotation(inst: Instance, h: int, w: int) -> str:
    """Object-CXR annotation of one object in integer pixels: ``0 x1 y1 x2 y2`` (rect), ``1 ...`` (ellipse by its
    bounding box) or ``2 x1 y1 ... xn yn`` (polygon)."""
    if inst.shape == "polygon":
        pts = np.asarray(inst.points).reshape(-1, 2)
        ij = np.array([[int(round(u * w - 0.5)), int(round(v * h - 0.5))] for u, v in pts])
        for axis in (0, 1):  # a small polygon can round to one column / row: the real annotations never do
            if ij[:, axis].max() == ij[:, axis].min():
                ij[int(np.argmax(pts[:, axis])), axis] += 1
        return "2 " + " ".join(f"{x} {y}" for x, y in ij)
    x1, y1 = math.floor((inst.cx - inst.rx) * w), math.floor((inst.cy - inst.ry) * h)
    x2, y2 = math.ceil((inst.cx + inst.rx) * w), math.ceil((inst.cy + inst.ry) * h)
    return f"{0 if inst.shape == 'rect' else 1} {x1} {y1} {x2} {y2}"


def write_object_cxr(out: Path, seed: int, n: int, image_size: int, n_test: int | None = None) -> dict:
    """train/#####.jpg, dev/#####.jpg (numbered on from train) and train.csv / dev.csv (``image_name,annotation``)."""
    n_dev = _held_out(n, n_test, max(1, min(max(10, n // 9), n // 4)), "object_cxr")
    rows: dict[str, list[str]] = {"train": [], "dev": []}
    shapes = Counter()
    for i in range(n):
        split = "dev" if i >= n - n_dev else "train"
        rng = case_rng(seed, "object_cxr", i)
        anat = sample_anatomy(rng)
        findings = ()
        if (i % 2 == 0) if i < 6 else rng.random() < 0.5:
            findings = (make_finding(rng, anat, "foreign_object", n=int(rng.integers(1, 5))),)
        case = Case(anat, findings, "PA", int(rng.integers(2**31)))
        h = image_size
        w = int(round(image_size * float(rng.uniform(0.8, 1.1))))
        name = f"{i + 1:05d}.jpg"
        save_image(out / split / name, to_uint8(render(case, h, w)))
        insts = [inst for f in findings for inst in f.instances]
        shapes.update(inst.shape for inst in insts)
        ann = ";".join(annotation(inst, h, w) for inst in insts)
        rows[split].append(f"{name},{ann}")
    for split, r in rows.items():
        write_text(out / f"{split}.csv", "image_name,annotation\n" + "".join(x + "\n" for x in r))
    n_pos = sum(1 for r in rows["train"] + rows["dev"] if not r.endswith(","))
    return {"train": len(rows["train"]), "dev": len(rows["dev"]), "positive": n_pos,
            "shapes": dict(sorted(shapes.items()))}
