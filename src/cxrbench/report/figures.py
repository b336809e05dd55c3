"""The report's figures, each one function of the collected metrics or of runs' saved examples -> a Figure.

- :func:`data_efficiency`: primary metric vs training fraction per (task, dataset), one line per method, with the
  95% interval as error bars.
- :func:`auroc_heatmap`: per-disease AUROC (NIH 14 labels, fine-tuned; CheXpert 5 labels, linear) per method and
  fraction.
- :func:`pseudo_mask_gallery`: G2D's pretraining examples (image, attention map, pseudo-mask, decoder prediction).
- :func:`segmentation_examples`, :func:`grounding_overlays`, :func:`detection_examples`: a few test images per
  method from the runs' ``examples.npz``.
- :func:`pretrain_loss`: pretraining loss per method against the step.

A figure with nothing to show says so in its panel instead of failing, so the report always has every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

HEATMAP_PANELS = (("finetune", "nih", "ChestX-ray14, fine-tuned"), ("linear", "chexpert", "CheXpert, linear probe"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(message: str, size: tuple[float, float] = (6, 2)):
    """A figure that states why it is empty."""
    fig, ax = _plt().subplots(figsize=size)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    ax.set_axis_off()
    return fig


def data_efficiency(summary: pd.DataFrame, primary: Mapping[tuple[str, str], str]):
    """summary: :func:`cxrbench.report.runs.summarize`; primary: (task, dataset) -> metric key. One panel per
    (task, dataset) trained at several fractions: mean over seeds vs fraction (log axis), error bars low-high."""
    keep = [primary.get((t, d)) == m for t, d, m in zip(summary.task, summary.dataset, summary.metric, strict=True)]
    data = summary[np.asarray(keep, dtype=bool)]
    panels = [k for k, g in data.groupby(["task", "dataset"], sort=False) if g["fraction"].nunique() > 1]
    if not panels:
        return _empty("no task was run at more than one training fraction")
    plt = _plt()
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    methods = list(dict.fromkeys(data["method"]))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for ax, (task, dataset) in zip(axes.flat, panels, strict=False):
        part = data[(data.task == task) & (data.dataset == dataset)]
        for method, g in part.groupby("method", sort=False):
            g = g.sort_values("fraction")
            y = 100 * g["mean"].to_numpy()
            lo, hi = (np.clip(100 * g[c].to_numpy(), 0, 100) for c in ("low", "high"))
            err = np.clip(np.stack([y - lo, hi - y]), 0, None)
            ax.errorbar(g["fraction"], y, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2, lw=1.2,
                        label=method, color=colors[method])
        ax.set_xscale("log")
        ax.set_xticks([1, 10, 100], ["1%", "10%", "100%"])
        ax.set_title(f"{task} / {dataset}", fontsize=9)
        ax.set_xlabel("training fraction", fontsize=8)
        ax.set_ylabel(f"{primary[(task, dataset)]} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(methods), 8),
               fontsize=8, frameon=False)  # below the panels: above them it ran into the title
    fig.suptitle("Data efficiency (mean over seeds, bars: 95% interval)", fontsize=10, y=1.02)
    return fig


def auroc_heatmap(summary: pd.DataFrame):
    """Per-disease AUROC (%) as a heatmap: rows diseases, columns method @ fraction; NIH and CheXpert panels."""
    plt = _plt()
    grids = []
    for task, dataset, title in HEATMAP_PANELS:
        part = summary[(summary.task == task) & (summary.dataset == dataset) & summary.metric.str.startswith("AUROC/")]
        if len(part):
            part = part.assign(disease=part.metric.str.split("/", n=1).str[1],
                               column=part.method + " @" + part.fraction.astype(str) + "%")
            order = list(dict.fromkeys(part.sort_values(["method", "fraction"]).column))
            grids.append((title, part.pivot_table(index="disease", columns="column", values="mean",
                                                  sort=False)[order] * 100))
    if not grids:
        return _empty("no per-disease AUROC: neither fine-tuned NIH nor linear CheXpert runs are in the matrix")
    heights = [max(2.5, 0.32 * len(g) + 1.2) for _, g in grids]
    width = max(6.0, 0.55 * max(g.shape[1] for _, g in grids) + 3)
    fig, axes = plt.subplots(len(grids), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, grid) in zip(axes[:, 0], grids, strict=True):
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=40, vmax=100, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 75 else "k")
        ax.set_title(f"{title}: AUROC (%) per disease", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="AUROC (%)")
    fig.tight_layout()
    return fig


def _image_grid(rows: list[tuple[str, list[tuple[str, Any, Any]]]], title: str):
    """rows: (row label, [(panel title, draw function(ax), unused)]) -> a grid of image panels."""
    plt = _plt()
    ncol = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 2.0 * len(rows) + 0.4), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(panels):
                name, draw, _ = panels[c]
                draw(ax)
                ax.set_title(name, fontsize=7)
            else:
                ax.set_axis_off()
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _show(img: np.ndarray, cmap: str = "gray", **kw):
    return lambda ax: ax.imshow(np.asarray(img, dtype=float), cmap=cmap, **kw)


def pseudo_mask_gallery(examples: Mapping[str, Mapping[str, np.ndarray]], k: int = 3):
    """examples: {method: arrays of ``<checkpoint>/examples.npz``} (image, attention, pseudo_mask, prediction, each
    (n, H, W) or (n, h, w)). One row per example image: image, attention map, pseudo-mask, decoder prediction."""
    rows = []
    for method, ex in examples.items():
        for i in range(min(k, len(ex["image"]))):
            rows.append((f"{method} #{i}", [
                ("image", _show(ex["image"][i]), None),
                ("attention map", _show(ex["attention"][i], "magma"), None),
                ("pseudo-mask", _show(ex["pseudo_mask"][i], "gray", vmin=0, vmax=1), None),
                ("decoder prediction", _show(ex["prediction"][i], "viridis", vmin=0, vmax=1), None),
            ]))
    if not rows:
        return _empty("no pseudo-mask examples were saved during pretraining\n"
                      "(pretraining writes <checkpoint>/examples.npz via tasks._predictions.save_pretrain_examples)")
    return _image_grid(rows, "G2D pseudo-masks from pretraining")


def _contour(mask: np.ndarray, color: str):
    return lambda ax: ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=0.8)


def positives_first(masks: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` positions of ``masks`` (n, H, W): those with ground-truth foreground first, then the empty ones,
    each in saved order (an empty ground truth shows no outline to compare with)."""
    has_fg = np.asarray(masks).reshape(len(masks), -1).any(axis=1)
    return [int(i) for i in np.concatenate([np.flatnonzero(has_fg), np.flatnonzero(~has_fg)])[:k]]


def segmentation_examples(examples: Mapping[str, Mapping[str, np.ndarray]], k: int = 3):
    """examples: {run label: arrays of a segmentation run's examples.npz (image, mask, prob)}. Per run: up to ``k``
    images, those with ground-truth foreground first (:func:`positives_first`), each with the ground truth outlined
    (green) beside the predicted probability (prob > 0.5 outlined red); empty ground truths are titled so."""
    rows = []
    for label, ex in examples.items():
        panels = []
        for i in positives_first(ex["mask"], k):
            img, gt, prob = ex["image"][i], ex["mask"][i], ex["prob"][i]
            gt_title = "image + GT" if np.asarray(gt).any() else "image (empty GT)"
            panels.append((f"#{i} {gt_title}", _both(_show(img), _contour(gt, "lime")), None))
            panels.append((f"#{i} prediction", _both(_show(prob, "viridis", vmin=0, vmax=1), _contour(prob, "red")),
                           None))
        rows.append((label, panels))
    if not rows:
        return _empty("no segmentation run saved examples")
    return _image_grid(rows, "Segmentation test examples (green: ground truth, red: prediction > 0.5)")


def _both(*draws):
    def draw(ax):
        for d in draws:
            d(ax)

    return draw


def _point(sim: np.ndarray):
    i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
    return lambda ax: ax.plot([j], [i], marker="x", color="cyan", ms=7, mew=2)


def grounding_overlays(examples: Mapping[str, Mapping[str, np.ndarray]], k: int = 3):
    """examples: {run label: a grounding run's examples.npz (image, mask, sim)}. Per image: the similarity map over
    the image, the ground-truth region outlined (green), the pointed location (argmax, cyan x)."""
    rows = []
    for label, ex in examples.items():
        panels = []
        for i in range(min(k, len(ex["image"]))):
            sim = np.asarray(ex["sim"][i], dtype=float)
            draw = _both(_show(ex["image"][i]), lambda ax, s=sim: ax.imshow(s, cmap="jet", alpha=0.4),
                         _contour(ex["mask"][i], "lime"), _point(sim))
            panels.append((f"#{i}", draw, None))
        rows.append((label, panels))
    if not rows:
        return _empty("no zero-shot grounding run saved examples (image-only methods cannot ground)")
    return _image_grid(rows, "Zero-shot grounding: similarity map, ground truth (green), pointed location (x)")


def _boxes(boxes: np.ndarray, color: str, scores: bool):
    def draw(ax):
        from matplotlib.patches import Rectangle

        for b in np.asarray(boxes, dtype=float):
            if not np.isfinite(b[:4]).all():
                continue
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=color, lw=1))
            if scores and b.shape[0] > 4:
                ax.text(b[0], b[1], f"{b[4]:.2f}", color="white", fontsize=5, va="bottom",
                        bbox={"facecolor": color, "alpha": 0.7, "pad": 0.5, "linewidth": 0})

    return draw


def detection_examples(examples: Mapping[str, Mapping[str, np.ndarray]], k: int = 4):
    """examples: {run label: a detection run's examples.npz (image, pred (n, m, 5), gt (n, g, 4), NaN padded)}.
    Ground-truth boxes green, detections red with their confidence."""
    rows = []
    for label, ex in examples.items():
        panels = [(f"#{i}", _both(_show(ex["image"][i]), _boxes(ex["gt"][i], "lime", False),
                                  _boxes(ex["pred"][i], "red", True)), None)
                  for i in range(min(k, len(ex["image"])))]
        rows.append((label, panels))
    if not rows:
        return _empty("no detection run saved examples")
    return _image_grid(rows, "Detection test examples (green: ground truth, red: detections with confidence)")


def pretrain_loss(curves: pd.DataFrame):
    """curves: ``step`` + one loss column per method (NaN where a method has no value at that step)."""
    methods = [c for c in curves.columns if c != "step"]
    if not methods:
        return _empty("no pretraining curves (curves.csv) were found")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for m in methods:
        part = curves[["step", m]].dropna()
        ax.plot(part["step"], part[m], label=m, lw=1.2)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (method's own objective)")
    ax.set_title("Pretraining loss per method (losses differ in scale between methods)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
