"""metrics.json + predictions.npz of every run -> the papers' tables (published beside reproduced), statistics,
figures and DVC metrics/plots.

:func:`build_report` writes, under the report directory (file names from :func:`cxrbench.matrix.report_files`):
``tables/<paper>_<table>.{md,csv,tex,html}`` (one set per published table), ``tables/scorecard.*``,
``tables/comparisons.*``, ``tables/contamination{,_metrics}.*`` (the audit:
:mod:`cxrbench.report.contamination`), ``runs.csv`` (every metric of every run with its bootstrap interval),
``summary.json`` and ``metrics/<table>.json`` (DVC metrics), ``figures/<name>.{png,svg}``, ``plots/`` (DVC plot data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench import matrix
from cxrbench.report import contamination, figures, runs, tables
from cxrbench.report.published import load_published, published_rows
from cxrbench.report.runs import collect, primary_metric, summarize

__all__ = ["build_report", "collect", "primary_metric", "summarize"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_figure(fig: Any, png: Path, svg: Path) -> None:
    import matplotlib.pyplot as plt

    for path in (png, svg):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    plt.close(fig)


def context(params: Mapping[str, Any]) -> dict[str, Any]:
    """What every table states: scale, split protocol, seeds, bootstrap settings."""
    boot = params.get("report", {}).get("bootstrap", {})
    return {"scale": params.get("scale", "custom"),
            "split_protocol": params.get("data", {}).get("split_protocol", "as in data.split_protocol"),
            "seeds": list(params["matrix"]["seeds"]), "resamples": int(boot.get("resamples", 200)),
            "boot_seed": int(boot.get("seed", 0))}


def summary_metrics(summary: pd.DataFrame) -> dict[str, Any]:
    """Nested primary metrics {task: {dataset: {method: {"f<pct>": mean}}}} for ``dvc metrics show / diff``."""
    out: dict[str, Any] = {}
    for rec in summary.to_dict("records"):
        if rec["metric"] != primary_metric(rec["task"], rec["dataset"]):
            continue
        node = out.setdefault(rec["task"], {}).setdefault(rec["dataset"], {}).setdefault(rec["method"], {})
        node[f"f{rec['fraction']}"] = round(float(rec["mean"]), 6)
    return out


def pretrain_curves(params: Mapping[str, Any]) -> pd.DataFrame:
    """Pretraining loss per method on a shared step axis: ``step`` + one column per method."""
    frames = []
    for method in params["matrix"]["methods"]:
        path = Path(matrix.checkpoint_dir(params, method)) / "curves.csv"
        if path.exists():
            curve = pd.read_csv(path)
            if {"step", "loss"} <= set(curve.columns):
                frames.append(curve[["step", "loss"]].rename(columns={"loss": method}).set_index("step"))
    if not frames:
        return pd.DataFrame({"step": []})
    return pd.concat(frames, axis=1).sort_index().reset_index()


def _examples(params: Mapping[str, Any], runs_dir: Path, task: str) -> dict[str, dict[str, np.ndarray]]:
    """{"<method> <dataset> <fraction>%": examples.npz arrays} of each method's run of ``task`` on its first
    dataset, largest fraction, first seed (the runs the example figures show)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    chosen: dict[str, matrix.Run] = {}
    for run in matrix.runs(params):
        best = chosen.get(run.method)
        if run.task == task and (best is None or (run.dataset == best.dataset
                                                  and (-run.fraction, run.seed) < (-best.fraction, best.seed))):
            chosen[run.method] = run
    for run in chosen.values():
        path = Path(run.directory(str(runs_dir))) / "examples.npz"
        if path.exists():
            with np.load(path) as f:
                out[f"{run.method} {run.dataset} {run.fraction}%"] = {k: f[k] for k in f.files}
    return out


def _pretrain_examples(params: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for method in params["matrix"]["methods"]:
        path = Path(matrix.checkpoint_dir(params, method)) / "examples.npz"
        if path.exists():
            with np.load(path) as f:
                out[method] = {k: f[k] for k in f.files}
    return out


def figure_functions(params: Mapping[str, Any], runs_dir: Path, summary: pd.DataFrame,
                     curves: pd.DataFrame) -> dict[str, Callable[[], Any]]:
    """{figure name: () -> Figure}: each a call of one :mod:`cxrbench.report.figures` function."""
    primary = {(t, d): primary_metric(t, d) for t, d in summary[["task", "dataset"]].drop_duplicates().values}
    return {
        "data_efficiency": lambda: figures.data_efficiency(summary, primary),
        "auroc_heatmap": lambda: figures.auroc_heatmap(summary),
        "pseudo_mask_gallery": lambda: figures.pseudo_mask_gallery(_pretrain_examples(params)),
        "segmentation_examples": lambda: figures.segmentation_examples(_examples(params, runs_dir, "segmentation")),
        "grounding_overlays": lambda: figures.grounding_overlays(_examples(params, runs_dir, "grounding")),
        "detection_examples": lambda: figures.detection_examples(_examples(params, runs_dir, "detection")),
        "pretrain_loss": lambda: figures.pretrain_loss(curves),
    }


def _write_table(files: Mapping[str, Path], stem: str, title: str, notes: list[str], table: pd.DataFrame) -> None:
    _write(files[f"{stem}_md"], tables.to_markdown(title, notes, table))
    _write(files[f"{stem}_csv"], tables.to_csv(notes, table))
    _write(files[f"{stem}_tex"], tables.to_latex(title, notes, table))
    _write(files[f"{stem}_html"], tables.to_html(title, notes, table))


def _comparison_table(comp: pd.DataFrame) -> pd.DataFrame:
    shown = comp.copy()
    for c in ("effect", "effect_low", "effect_high"):
        shown[c] = (100 * shown[c]).round(2)
    for c in ("p_bootstrap", "p_delong"):
        shown[c] = shown[c].map(lambda p: "" if pd.isna(p) else f"{p:.3g}")
    return shown


def _plots(files: Mapping[str, Path], summary: pd.DataFrame, curves: pd.DataFrame) -> None:
    """DVC plot data: ``plots/pretrain_loss.csv`` (step, one column per method) and ``plots/efficiency.csv``
    (fraction, one column per method x task/dataset on its primary metric, in percent)."""
    _write(files["plot_pretrain_loss"], curves.to_csv(index=False))
    keep = [primary_metric(t, d) == m for t, d, m in zip(summary.task, summary.dataset, summary.metric, strict=True)]
    part = summary[np.asarray(keep, dtype=bool)]
    part = part.assign(series=part.task + "/" + part.dataset + "/" + part.method, value=100 * part["mean"])
    wide = part.pivot_table(index="fraction", columns="series", values="value").reset_index() if len(part) else \
        pd.DataFrame({"fraction": []})
    _write(files["plot_efficiency"], wide.to_csv(index=False))


def render_figures(params: Mapping[str, Any], runs_dir: Path, summary: pd.DataFrame, curves: pd.DataFrame,
                   files: Mapping[str, Path]) -> None:
    """Every figure of :func:`figure_functions` to its PNG and SVG."""
    for name, make in figure_functions(params, runs_dir, summary, curves).items():
        _save_figure(make(), files[f"figure_{name}_png"], files[f"figure_{name}_svg"])


def build_report(params: Mapping[str, Any], runs_dir: Path, out_dir: Path, *, with_figures: bool = True,
                 workers: int = 1) -> list[Path]:
    """Write every report file (see the module docstring) under ``out_dir``; returns their paths
    (``with_figures=False``: everything but the figures, for tests of the tables). ``workers`` >= 2: the figures
    are drawn in a second process while this one computes the bootstrap comparisons and writes the tables (the
    report is the DAG's last job, alone on the machine; its figures are a third of its time)."""
    cfg = params.get("report", {})
    ctx = context(params)
    demo = ctx["scale"] == "demo"
    long = collect(params, runs_dir)
    preds = runs.predictions(params, runs_dir)
    boot = runs.bootstrap(preds, ctx["resamples"], ctx["boot_seed"])
    summary = summarize(long, boot)
    published = load_published(cfg.get("published_extra", []))
    rows = published_rows(cfg.get("published_rows"))
    methods = list(params["matrix"]["methods"])
    files = {k: Path(out_dir) / Path(v).relative_to(params["paths"]["report"])
             for k, v in matrix.report_files(params).items()}
    curves = pretrain_curves(params)
    drawing = _start_figures(params, runs_dir, summary, curves, files, workers) if with_figures else None
    try:
        _write_tables(params, ctx, demo, long, preds, boot, summary, published, rows, methods, files, curves)
    finally:
        if drawing is not None:
            _finish_figures(drawing, params, runs_dir, summary, curves, files)
    if not with_figures:
        return [f for k, f in files.items() if not k.startswith("figure_")]
    return list(files.values())


def _start_figures(params: Mapping[str, Any], runs_dir: Path, summary: pd.DataFrame, curves: pd.DataFrame,
                   files: Mapping[str, Path], workers: int) -> Any:
    """A future drawing the figures in a second process (``workers`` >= 2; spawned, not forked: this process may
    hold OpenMP threads), else "here": :func:`_finish_figures` then draws them in this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if workers < 2:
        return "here"
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    future = pool.submit(render_figures, dict(params), runs_dir, summary, curves, dict(files))
    pool.shutdown(wait=False)
    return future


def _finish_figures(drawing: Any, params: Mapping[str, Any], runs_dir: Path, summary: pd.DataFrame,
                    curves: pd.DataFrame, files: Mapping[str, Path]) -> None:
    if drawing == "here":
        render_figures(params, runs_dir, summary, curves, files)
    else:
        drawing.result()  # re-raises the worker's error


def _write_tables(params: Mapping[str, Any], ctx: dict, demo: bool, long: pd.DataFrame, preds: Any,
                  boot: pd.DataFrame, summary: pd.DataFrame, published: Any, rows: Any, methods: list[str],
                  files: Mapping[str, Path], curves: pd.DataFrame) -> None:
    """The tables, scorecard, comparisons, runs.csv, summary.json, curves and DVC plot data."""
    cards = []
    for spec in tables.TABLES:
        table, reasons = tables.paper_table(spec, published, summary, long, rows, methods)
        _write_table(files, spec.name, spec.title, tables.header_notes([f"Metric: {spec.form}.", *spec.notes,
                                                                          *reasons], ctx), table)
        _write(files[f"metrics_{spec.name}"], json.dumps(tables.table_metrics(spec, summary, published, rows),
                                                         indent=2, sort_keys=True))
        cards.append(tables.scorecard(spec, published, summary, rows, demo))
    card_notes = tables.header_notes(["Every published number with a reproduced value; low/high: the reproduced "
                                      "95% interval" + ("" if demo else "; inside: the published value lies in it")],
                                     ctx, cells=False)
    _write_table(files, "scorecard", "Scorecard: published vs reproduced", card_notes, pd.concat(cards))
    comp = runs.comparisons(preds, methods, resamples=ctx["resamples"], seed=ctx["boot_seed"])
    comp_notes = tables.header_notes(["Paired tests on the same test images: effect = method - baseline in "
                                      "percentage points, its paired-bootstrap 95% interval and two-sided p; "
                                      "DeLong's p for single-label AUROC."], ctx, cells=False)
    _write_table(files, "comparisons", "Paired comparisons between methods", comp_notes, _comparison_table(comp))
    for stem, title, notes, table in contamination.report_tables(params, preds):
        _write_table(files, stem, title, notes, table)
    for stem in matrix.TASK_TABLES:
        title, build = tables.TASK_TABLES[stem]
        _write_table(files, stem, title, *build(summary, ctx))
    merged = long.merge(boot, on=[*runs.KEYS, "metric"], how="left") if len(boot) else long
    _write(files["runs_csv"], merged.to_csv(index=False))
    _write(files["summary"], json.dumps(summary_metrics(summary), indent=2, sort_keys=True))
    _write(files["curves"], curves.to_csv(index=False))
    _plots(files, summary, curves)
