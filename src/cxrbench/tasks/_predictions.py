"""Per-image test predictions next to a run's metrics.json, for the report's bootstrap intervals and paired tests.

One compact ``predictions.npz`` per run (written atomically) holding what a resample of the test images needs and
nothing else: the manifest row index of every test image (never a path or patient id) and

- classification (``kind="classification"``): ``scores`` (N, K) probabilities, ``targets`` (N, K) binary,
  ``labels`` (K,) the column names;
- segmentation: per-image pixel counts at the metric's threshold, ``inter``, ``pred``, ``gt`` (N,), and the
  evaluation ``batch_size`` the reference Dice averages over;
- detection: the detections the metric sees (score >= conf_threshold, at most max_dets per image, score-sorted)
  flattened as ``det_image`` (D,), ``det_boxes`` (D, 4), ``det_scores`` (D,), and the ground truth as
  ``gt_image`` (G,), ``gt_boxes`` (G, 4);
- grounding: per-image ``hit`` (pointing game), ``iou`` and ``dice`` (N,).

Also :func:`save_pretrain_examples`, which pretraining calls to keep a few pseudo-mask examples for the report's
gallery.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FILENAME = "predictions.npz"
EXAMPLES = "examples.npz"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed to ``path`` through a temporary file and os.replace (torch-free: the report imports
    this module, and needs no torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def save_predictions(out_dir: str | Path, kind: str, rows: Any, **arrays: Any) -> Path:
    """Write ``<out_dir>/predictions.npz`` with ``kind``, ``row`` (N,) int64 and the given arrays."""
    path = Path(out_dir) / FILENAME
    save_npz_atomic(path, kind=np.asarray(kind), row=np.asarray(rows, dtype=np.int64).reshape(-1),
                    **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def classification(out_dir: str | Path, rows: Any, targets: Any, *, labels: Sequence[str], scores: Any = None,
                   logits: Any = None, multiclass: bool = False) -> Path:
    """targets (N, K); ``scores`` (N, K) probabilities, or ``logits`` (N, K) turned into sigmoid (multi-label)
    or softmax (multi-class) probabilities, as the metric scores them; ``labels``: the K column names, stored as
    ``labels`` so that a per-label interval is the interval of its own column (metrics.json sorts its keys)."""
    labels = [str(n) for n in labels]
    if len(labels) != np.shape(targets)[1]:
        raise ValueError(f"{len(labels)} label names for {np.shape(targets)[1]} prediction columns: {labels}")
    if scores is None:
        z = np.asarray(logits, dtype=np.float64)
        if multiclass:
            e = np.exp(z - z.max(1, keepdims=True))
            scores = e / e.sum(1, keepdims=True)
        else:
            scores = 1.0 / (1.0 + np.exp(-z))
    return save_predictions(out_dir, "classification", rows, scores=np.asarray(scores, dtype=np.float32),
                            targets=(np.asarray(targets) > 0.5).astype(np.uint8), multiclass=bool(multiclass),
                            labels=np.asarray(labels, dtype=str))


def segmentation(out_dir: str | Path, rows: Any, prob: Any, target: Any, *, batch_size: int,
                 threshold: float = 0.5) -> Path:
    """prob, target (N, H, W) -> per-image counts of prob > threshold, target > 0.5 and their overlap."""
    p = np.asarray(prob).reshape(len(prob), -1) > threshold
    g = np.asarray(target).reshape(len(target), -1) > 0.5
    return save_predictions(out_dir, "segmentation", rows, inter=(p & g).sum(1), pred=p.sum(1), gt=g.sum(1),
                            batch_size=int(batch_size))


def detection(out_dir: str | Path, rows: Any, preds: Sequence[dict], gts: Sequence[Any], *, max_dets: int,
              conf_threshold: float = 0.5) -> Path:
    """preds: one ``{"boxes" (n, 4), "scores" (n,)}`` per test image; gts: one (m, 4) array per image."""
    from cxrbench.metrics.detection import _prepare  # the metric's own filter: what it sees is what is stored

    images = _prepare(preds, gts, conf_threshold, max_dets)
    det_n = [len(s) for _, s, _ in images]
    gt_n = [len(g) for _, _, g in images]
    return save_predictions(
        out_dir, "detection", rows,
        det_image=np.repeat(np.arange(len(images)), det_n),
        det_boxes=np.concatenate([b for b, _, _ in images] + [np.zeros((0, 4))]).astype(np.float32),
        det_scores=np.concatenate([s for _, s, _ in images] + [np.zeros(0)]).astype(np.float32),
        gt_image=np.repeat(np.arange(len(images)), gt_n),
        gt_boxes=np.concatenate([g for _, _, g in images] + [np.zeros((0, 4))]).astype(np.float32),
        conf_threshold=float(conf_threshold), max_dets=int(max_dets),
    )


def grounding(out_dir: str | Path, rows: Any, native: Any, sim: Any, gt: Any, *, threshold: float) -> Path:
    """native (N, h, w) and upsampled (N, H, W) similarity maps, gt (N, H, W): per-image pointing hit, IoU, Dice
    from the task's own metric functions applied one image at a time."""
    from cxrbench.metrics.grounding import map_iou_dice, pointing_game

    hit, iou, dice = [], [], []
    for i in range(len(gt)):
        hit.append(pointing_game(native[i : i + 1], gt[i : i + 1]))
        m = map_iou_dice(sim[i : i + 1], gt[i : i + 1], threshold=threshold)
        iou.append(m["IoU"])
        dice.append(m["Dice"])
    return save_predictions(out_dir, "grounding", rows, hit=np.asarray(hit), iou=np.asarray(iou),
                            dice=np.asarray(dice))


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``<run_dir>/predictions.npz`` (``kind`` as str), or ``None`` when the run saved none."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    out["kind"] = str(out["kind"])
    return out


def save_pretrain_examples(checkpoint_dir: str | Path, *, image: Any, attention: Any, pseudo_mask: Any,
                           prediction: Any, rows: Any) -> Path:
    """Keep a few G2D pseudo-mask examples for the report's gallery: ``<checkpoint_dir>/examples.npz``.

    image (k, H, W) the network input (first channel), attention (k, h, w) the aggregated attention map the
    pseudo-mask was thresholded from, pseudo_mask (k, H, W) {0, 1}, prediction (k, H, W) the decoder's
    probabilities; rows (k,) manifest rows of the pretraining corpus. Call it once at the end of pretraining
    (a handful of images, k <= 8) so that the gallery shows the final decoder.
    """
    path = Path(checkpoint_dir) / EXAMPLES
    arrays = {"image": image, "attention": attention, "pseudo_mask": pseudo_mask, "prediction": prediction}
    save_npz_atomic(path, row=np.asarray(rows, dtype=np.int64).reshape(-1),
                    **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    return path
