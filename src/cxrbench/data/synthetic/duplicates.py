"""Known cross-dataset duplicates planted into the synthetic downloads, so the contamination audit can be tested.

The real RSNA Pneumonia and SIIM-ACR images are NIH ChestX-ray14 images re-encoded as DICOM under new ids; the
synthetic stand-in reproduces that with the pretraining corpus: ``k`` MIMIC-CXR images that the pretraining corpus
reads (official ``train`` split, frontal, a report with FINDINGS or IMPRESSION, no MS-CXR patient, no pneumonia /
pneumothorax / consolidation label) replace the pixels of ``k`` negative images of the RSNA and of the SIIM test
split. They keep the target's id, labels and DICOM storage variant; the pixels are the MIMIC JPEG with a contrast
and brightness change (x -> 0.95 x + 0.02, then gamma 1.05) and a JPEG round trip at quality 80, as a re-encoding
would leave them. MS-CXR shares MIMIC's ids by construction: every MS-CXR row is a MIMIC image (``ms_cxr_rows``).

The ground truth goes to ``<out_root>/DUPLICATES.json`` beside the raw data (raw ids: never into a prepared store, a
log or a report); ``generate`` returns only the counts.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .dicom_writer import write_dicom
from .latent import case_rng
from .layouts_kaggle import _dicom_meta, kaggle_items
from .layouts_mimic import _split, mimic_corpus, ms_cxr_rows

GROUND_TRUTH = "DUPLICATES.json"
TARGETS = ("rsna", "siim")
_AVOID = ("Pneumonia", "Pneumothorax", "Consolidation")


def _has_text(report: str) -> bool:
    return "FINDINGS:" in report or "IMPRESSION:" in report


def mimic_sources(seed: int, n_patients: int, image_size: int, n_ms_cxr: int) -> list:
    """The MIMIC images eligible as planted sources (``MimicImage``), in corpus order: the first image of a train
    study with a report, frontal, no MS-CXR patient (the MIMIC store excludes their images), none of ``_AVOID``."""
    ms_subjects = {int(r[3].split("/")[2][1:]) for r in ms_cxr_rows(seed, n_ms_cxr, n_patients, image_size)}
    out = []
    for st in mimic_corpus(seed, n_patients, image_size):
        im = st.images[0]
        if (_split(st.subject) == "train" and im.view in ("PA", "AP") and st.subject not in ms_subjects
                and _has_text(st.report) and not any(st.labels.get(c) == 1.0 for c in _AVOID)):
            out.append(im)
    return out


def reencode(img8: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> float [0, 1] (H, W): contrast/brightness change, gamma 1.05, JPEG quality 80."""
    x = np.clip(0.95 * img8.astype(np.float64) / 255.0 + 0.02, 0.0, 1.0) ** 1.05
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=80)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64) / 255.0


def _test_negatives(dataset: str, raw: Path) -> list[str]:
    """Raw ids of ``dataset``'s negative test images, as ``prepare`` will split them: the reader's own split with
    default options (``data.datasets.<name>.options: {}``; a ``test_size`` / ``valid_size`` there moves the split,
    and planted images may then land outside the test set: the audit counts only what is in it)."""
    from cxrbench.registry import DATASETS  # the reader alone (prepare would import torch)

    reader = DATASETS.get(dataset)()
    index = reader.read(raw, {})
    index = getattr(index, "index", index)
    split = reader.reference_split(index, {})
    label = reader.label_names[0]
    neg = index[(split == "test").to_numpy() & (index[label] == 0).to_numpy()]
    return sorted(neg["image_id"].astype(str).unique())


def _target_path(dataset: str, raw: Path, item) -> Path:
    if dataset == "rsna":
        return raw / "stage_2_train_images" / f"{item.image_id}.dcm"
    study, series, sop = item.uids
    return raw / "dicom-images-train" / study / series / f"{sop}.dcm"


def plant(dataset: str, raw: Path, mimic_raw: Path, *, seed: int, k: int, sizes: dict[str, int],
          image_size: int) -> list[dict[str, str]]:
    """Overwrite ``k`` negative test images of ``dataset`` (in its freshly written download ``raw``) with re-encoded
    MIMIC images read from ``mimic_raw``; returns one ground-truth record per planted image."""
    if k <= 0:
        return []
    sources = mimic_sources(seed, sizes["mimic"], image_size, sizes["ms_cxr"])
    targets = _test_negatives(dataset, raw)
    if len(sources) < 2 * k or len(targets) < k:
        raise ValueError(f"synthetic duplicates: {k} asked for {dataset}, but only {len(sources) // 2} MIMIC "
                         f"sources and {len(targets)} negative test images are available; lower synthetic.duplicates")
    rng = case_rng(seed, "duplicates", TARGETS.index(dataset))
    half = sources[: len(sources) // 2] if dataset == TARGETS[0] else sources[len(sources) // 2:]  # disjoint
    chosen_src = [half[i] for i in sorted(rng.choice(len(half), k, replace=False))]
    chosen_tgt = [targets[i] for i in sorted(rng.choice(len(targets), k, replace=False))]
    items = {it.image_id: it for it in kaggle_items(seed, dataset, sizes[dataset], image_size)}
    out = []
    for src, tid in zip(chosen_src, chosen_tgt, strict=True):
        img8 = np.asarray(Image.open(mimic_raw / src.path).convert("L"))
        item = items[tid]
        write_dicom(_target_path(dataset, raw, item), reencode(img8), variant=item.variant,
                    meta=_dicom_meta(item, dataset), uids=item.uids)
        out.append({"source": "mimic", "source_id": src.dicom_id, "source_patient": str(src.subject),
                    "target": dataset, "target_id": tid})
    return out


def planting(write: Callable, name: str, out_root: Path, seed: int, k: int, sizes: dict[str, int], image_size: int,
             planted: list) -> Callable:
    """A dataset writer ``write(out, seed, n, size)`` followed by :func:`plant` on the download it just wrote (in
    its temporary directory, so the dataset is still swapped in complete); the records go to ``planted``."""

    def work(out: Path, seed_: int, n: int, size: int) -> dict:
        summary = write(out, seed_, n, size)
        planted.extend(plant(name, out, out_root / "mimic", seed=seed, k=k, sizes=sizes, image_size=image_size))
        return summary

    return work


def shared_ids(seed: int, sizes: dict[str, int], image_size: int) -> list[dict[str, str]]:
    """MS-CXR images that ARE MIMIC images (every one, by construction): dicom id and subject."""
    rows = ms_cxr_rows(seed, sizes["ms_cxr"], sizes["mimic"], image_size)
    seen = {r[0]: r[3].split("/")[2][1:] for r in rows}
    return [{"source": "mimic", "source_id": d, "source_patient": s, "target": "ms_cxr", "target_id": d}
            for d, s in sorted(seen.items())]


def write_ground_truth(out_root: Path, planted: list[dict[str, str]], shared: list[dict[str, str]]) -> Path:
    """``<out_root>/DUPLICATES.json`` (atomic): {"planted": [...], "shared_ids": [...]}."""
    path = Path(out_root) / GROUND_TRUTH
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"planted": planted, "shared_ids": shared}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
