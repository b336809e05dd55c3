"""Entry point: generate every synthetic dataset in its real download layout under ``out_root/<name>/``."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import duplicates as dup
from .layouts_kaggle import write_rsna, write_siim
from .layouts_mimic import write_mimic, write_ms_cxr
from .layouts_other import write_covidx, write_object_cxr
from .layouts_public import COMPETITION, NIH_NAMES, write_chexpert, write_nih

#: demo sizes: MIMIC = patients (1-3 studies each, ~1.5 images per study), the others = images (MS-CXR: annotated
#: MIMIC images). All eight at 256 px take well under 30 s on one core.
DEFAULT_SIZES: dict[str, int] = {"mimic": 300, "chexpert": 500, "nih": 500, "rsna": 300, "siim": 300, "covidx": 400,
                                 "object_cxr": 360, "ms_cxr": 60}
DATASET_NAMES = tuple(DEFAULT_SIZES)


def _rle_encoder() -> Callable:
    from cxrbench.data.rle import rle_encode

    return rle_encode


#: datasets whose official test list the generator writes (``test_sizes`` sets its length)
TEST_SIZED = ("chexpert", "nih", "covidx", "object_cxr")


def _writer(name: str, sizes: dict[str, int], test_sizes: dict[str, int] | None = None) -> Callable:
    n_test = (test_sizes or {}).get(name)
    if n_test is not None:
        if name not in TEST_SIZED:
            raise ValueError(f"synthetic.test_sizes.{name}: only {list(TEST_SIZED)} have a generated test list "
                             "(the others are split by the protocol: data.datasets.<name>.options)")
        base = _writer(name, sizes)
        return lambda out, seed, n, size: base(out, seed, n, size, n_test=int(n_test))
    if name == "ms_cxr":
        return lambda out, seed, n, size: write_ms_cxr(out, seed, n, size, sizes["mimic"])
    if name == "siim":
        return lambda out, seed, n, size: write_siim(out, seed, n, size, _rle_encoder())
    return {"mimic": write_mimic, "chexpert": write_chexpert, "nih": write_nih, "rsna": write_rsna,
            "covidx": write_covidx, "object_cxr": write_object_cxr}[name]


def _atomic(out_root: Path, name: str, work: Callable[[Path], dict]) -> dict:
    """Run ``work`` on a temporary sibling directory, then move it to ``out_root/name`` (replacing an old one)."""
    final, tmp, old = out_root / name, out_root / f".{name}.tmp-{os.getpid()}", out_root / f".{name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = work(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return summary


def _generate_one(out_root: Path, name: str, *, seed: int, sizes: dict[str, int], image_size: int, duplicates: int,
                  test_sizes: dict[str, int] | None) -> tuple[dict, list, float]:
    """Write one dataset -> (its summary, the duplicate records planted into it, seconds)."""
    t0, planted = time.perf_counter(), []
    write = _writer(name, sizes, test_sizes)
    if duplicates and name in dup.TARGETS:
        write = dup.planting(write, name, out_root, seed, duplicates, sizes, image_size, planted)
    summary = _atomic(out_root, name, lambda d: write(d, seed, sizes[name], image_size))
    return summary, planted, round(time.perf_counter() - t0, 3)


def _run_all(job: Callable, names: list[str], needs_mimic: set[str], workers: int) -> list[tuple[str, tuple]]:
    """[(name, job(name))] in ``names`` order; with ``workers`` > 1 in a process pool, ``needs_mimic`` after MIMIC."""
    if workers <= 1:
        first = [n for n in names if n not in needs_mimic]
        done = {n: job(n) for n in first + [n for n in names if n in needs_mimic]}
        return [(n, done[n]) for n in names]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        order = sorted((n for n in names if n not in needs_mimic), key=lambda n: n != "mimic")  # MIMIC first
        futures = {n: pool.submit(job, n) for n in order}
        if needs_mimic:
            futures["mimic"].result()
            futures.update({n: pool.submit(job, n) for n in names if n in needs_mimic})
        return [(n, futures[n].result()) for n in names]


def disease_counts(summary: dict[str, dict]) -> dict[str, int]:
    """Positive images per disease of the protocol's 25 (keys ``<dataset>/<label>``) for the generated datasets."""
    out: dict[str, int] = {}
    if "nih" in summary:
        out.update({f"nih/{x}": summary["nih"]["positives"].get(x, 0) for x in NIH_NAMES.values()})
    if "chexpert" in summary:
        out.update({f"chexpert/{x}": summary["chexpert"]["positives"].get(x, 0) for x in COMPETITION.values()})
    if "rsna" in summary:
        out["rsna/Pneumonia"] = summary["rsna"]["positive"]
    if "siim" in summary:
        out["siim/Pneumothorax"] = summary["siim"]["positive"]
    if "covidx" in summary:
        for cls in ("normal", "pneumonia", "COVID-19"):
            out[f"covidx/{cls}"] = sum(v for k, v in summary["covidx"]["classes"].items() if k.endswith("/" + cls))
    if "object_cxr" in summary:
        out["object_cxr/Foreign object"] = summary["object_cxr"]["positive"]
    return out


def generate(out_root: Path, *, seed: int = 0, sizes: dict[str, int] | None = None, image_size: int = 256,
             datasets: Sequence[str] | None = None, duplicates: int = 0,
             test_sizes: dict[str, int] | None = None, workers: int = 1) -> dict:
    """Write the synthetic datasets under ``out_root/<name>/`` in their real download layouts.

    ``sizes`` overrides ``DEFAULT_SIZES`` per dataset (MIMIC: patients; others: images). ``ms_cxr`` boxes refer to the
    MIMIC corpus of the same seed, ``sizes["mimic"]`` and ``image_size`` (generate ``mimic`` too to have its images).
    Output is byte-identical for identical arguments. Returns ``{"seed", "image_size", "sizes", "datasets":
    {name: counts}, "diseases": {"<dataset>/<label>": positives}, "planted_phi": {name: [identifiers]},
    "seconds": {name: s}, "duplicates": {name: planted}}``; planted identifiers must never reach a prepared store.
    ``duplicates``: MIMIC images planted into the RSNA and SIIM test splits each (``duplicates.py``; needs
    ``mimic`` generated first); the ground truth goes to ``out_root/DUPLICATES.json``.
    ``test_sizes``: images of the official test list per dataset of :data:`TEST_SIZED` (default: each writer's share,
    about 10%): the demo grows its test sets without growing the training sets every method trains on.
    ``workers`` > 1 writes datasets in that many processes (each dataset draws from its own seeded generators, so
    the files are the same as with one; the duplicate targets wait for MIMIC).
    """
    wrong = sorted(set(test_sizes or {}) - set(TEST_SIZED))
    if wrong:
        raise ValueError(f"synthetic.test_sizes: {wrong} have no generated test list; expected some of "
                         f"{list(TEST_SIZED)} (the others are split by the protocol: data.datasets.<name>.options)")
    if image_size < 32:
        raise ValueError(f"image_size={image_size}: expected at least 32 pixels")
    full = {**DEFAULT_SIZES, **(sizes or {})}
    names = list(datasets or DATASET_NAMES)
    unknown = [n for n in names if n not in DEFAULT_SIZES]
    if unknown:
        raise ValueError(f"unknown synthetic dataset(s) {unknown}; expected some of {list(DATASET_NAMES)}")
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    planted: list[dict[str, str]] = []
    result: dict = {"seed": seed, "image_size": image_size, "sizes": {n: full[n] for n in names}, "datasets": {},
                    "planted_phi": {}, "seconds": {}}
    job = functools.partial(_generate_one, out_root, seed=seed, sizes=full, image_size=image_size,
                            duplicates=duplicates, test_sizes=test_sizes)
    needs_mimic = set(dup.TARGETS) if duplicates and "mimic" in names else set()
    for name, (summary, records, seconds) in _run_all(job, names, needs_mimic, workers):
        planted += records
        result["planted_phi"][name] = summary.pop("planted_phi", [])
        result["datasets"][name] = summary
        result["seconds"][name] = seconds
    result["diseases"] = disease_counts(result["datasets"])
    if duplicates:
        dup.write_ground_truth(out_root, planted, dup.shared_ids(seed, full, image_size))
        result["duplicates"] = {n: sum(r["target"] == n for r in planted) for n in dup.TARGETS if n in names}
    return result

