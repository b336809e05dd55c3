"""metrics.json files -> one long DataFrame -> tables (published beside reproduced), a figure, DVC summary metrics.

Each output is one function of the DataFrame; figures read only metrics files (never checkpoints or data).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench import matrix
from cxrbench.report.published import load_published, published_for

#: the metric each task is summarised by (the papers' headline metric, in its reference form)
PRIMARY = {
    "linear": "AUROC", "finetune": "AUROC", "segmentation": "Dice@reference", "segmentation_ed": "Dice@reference",
    "detection": "mAP@reference",
    "zeroshot": "AUROC", "grounding": "PointingGame",
}
PRIMARY_BY_DATASET = {("linear", "covidx"): "ACC"}
#: what the comparison table shows per task (every metric of every run is in runs.csv)
TABLE_METRICS = {
    "linear": ("AUROC", "ACC"), "finetune": ("AUROC",), "segmentation": ("Dice@reference", "Dice@strict"),
    "segmentation_ed": ("Dice@reference", "Dice@strict"), "detection": ("mAP@reference", "mAP@strict"),
    "zeroshot": ("AUROC", "F1", "ACC"), "grounding": ("PointingGame", "IoU", "Dice"),
}


def primary_metric(task: str, dataset: str) -> str:
    return PRIMARY_BY_DATASET.get((task, dataset), PRIMARY.get(task, "AUROC"))


def collect(params: Mapping[str, Any], runs_dir: Path) -> pd.DataFrame:
    """One row per (run, metric): method, task, dataset, fraction, seed, status, reason, metric, value."""
    rows = []
    for run in matrix.runs(params):
        path = Path(run.metrics_path(str(runs_dir)))
        if not path.exists():
            raise FileNotFoundError(f"report: missing {path} (run the evaluate phase first)")
        result = json.loads(path.read_text())
        base = {"method": run.method, "task": run.task, "dataset": run.dataset, "fraction": run.fraction,
                "seed": run.seed, "status": result.get("status", "ok"), "reason": result.get("reason")}
        metrics = result.get("metrics") or {}
        if not metrics:
            rows.append({**base, "metric": None, "value": math.nan})
        rows += [{**base, "metric": k, "value": float(v)} for k, v in metrics.items() if _is_number(v)]
    return pd.DataFrame(rows)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, n and 95% CI over seeds for every (method, task, dataset, fraction, metric)."""
    from cxrbench.metrics.stats import summarize as stats

    ok = long[(long["status"] == "ok") & long["metric"].notna() & ~long["metric"].str.contains("/", na=False)]
    keys = ["task", "dataset", "metric", "fraction", "method"]
    out = []
    for key, group in ok.groupby(keys, sort=True):
        out.append({**dict(zip(keys, key, strict=True)), **stats(group["value"].tolist())})
    return pd.DataFrame(out)


def table(summary: pd.DataFrame, long: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The comparison table: reproduced (percent, mean +/- sd over seeds) beside the published value and source."""
    rows = []
    for rec in summary.to_dict("records"):
        if rec["metric"] not in TABLE_METRICS.get(rec["task"], (primary_metric(rec["task"], rec["dataset"]),)):
            continue
        pub = published_for(published, rec["method"], rec["task"], rec["dataset"], rec["metric"], rec["fraction"])
        mean = 100.0 * rec["mean"]
        pub_num = pd.to_numeric(pub["published"], errors="coerce")
        rows.append({
            "task": rec["task"], "dataset": rec["dataset"], "metric": rec["metric"], "fraction_pct": rec["fraction"],
            "method": rec["method"], "reproduced": round(mean, 2),
            "sd": round(100.0 * rec["sd"], 2) if rec["n"] > 1 else None, "n_seeds": rec["n"],
            "ci95": _ci(rec), "published": pub["published"],
            "difference": round(mean - float(pub_num), 2) if pd.notna(pub_num) else None, "source": pub["source"],
        })
    na = long[long["status"] == "not_applicable"].drop_duplicates(["method", "task", "dataset"])
    for rec in na.to_dict("records"):
        rows.append({
            "task": rec["task"], "dataset": rec["dataset"], "metric": primary_metric(rec["task"], rec["dataset"]),
            "fraction_pct": rec["fraction"], "method": rec["method"], "reproduced": None,
            "published": "", "source": f"not applicable: {rec['reason']}",
        })
    return pd.DataFrame(rows)


def _ci(rec: Mapping[str, Any]) -> str | None:
    if rec.get("ci95_low") is None or rec["n"] < 3:
        return None
    return f"[{100 * rec['ci95_low']:.2f}, {100 * rec['ci95_high']:.2f}]"


def markdown(tab: pd.DataFrame, scale: str) -> str:
    """One Markdown section per task, primary metrics first."""
    lines = [
        "# cxrbench results", "",
        f"Scale: **{scale}**. Reproduced values are percentages (mean over seeds; sd when n > 1). Segmentation and",
        "detection use the *reference* metric forms (MGCA's Dice and mAP quirks) to match the published column;",
        "the strict forms are in `runs.csv`. Zero-shot F1/ACC use the max-F1 threshold chosen on the test set,",
        "as published.",
        "",
    ]
    for task, part in tab.groupby("task", sort=False):
        shown = part.drop(columns=["task"]).astype(object)
        shown = shown.where(shown.notna(), "")  # blank, not "nan", where a cell has no value (e.g. sd of one seed)
        lines += [f"## {task}", "", shown.to_markdown(index=False), ""]
    return "\n".join(lines)


def summary_metrics(summary: pd.DataFrame) -> dict[str, Any]:
    """Nested primary metrics {task: {dataset: {method: {"f<pct>": mean}}}} for ``dvc metrics show / diff``."""
    out: dict[str, Any] = {}
    for rec in summary.to_dict("records"):
        if rec["metric"] != primary_metric(rec["task"], rec["dataset"]):
            continue
        node = out.setdefault(rec["task"], {}).setdefault(rec["dataset"], {}).setdefault(rec["method"], {})
        node[f"f{rec['fraction']}"] = round(float(rec["mean"]), 6)
    return out


def figure(summary: pd.DataFrame):
    """Primary metric against the training fraction, one panel per (task, dataset), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    keep = [m == primary_metric(t, d) for t, d, m in zip(summary.task, summary.dataset, summary.metric, strict=True)]
    data = summary[keep].copy()
    data["panel"] = data["task"] + " / " + data["dataset"] + " (" + data["metric"] + ")"
    data["value"] = 100.0 * data["mean"]
    grid = sns.relplot(data=data, x="fraction", y="value", hue="method", col="panel", col_wrap=4, kind="line",
                       marker="o", height=2.6, aspect=1.2, facet_kws={"sharey": False})
    grid.set(xscale="log", xticks=[1, 10, 100], xticklabels=["1%", "10%", "100%"])
    grid.set_titles("{col_name}", size=8)
    grid.set_axis_labels("training fraction", "metric (%)")
    return grid.figure


def pretrain_curves(params: Mapping[str, Any]) -> pd.DataFrame:
    """Pretraining loss per method on a shared step axis (what ``dvc plots`` draws)."""
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


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_report(params: Mapping[str, Any], runs_dir: Path, out_dir: Path) -> list[Path]:
    """Write table.csv, table.md, runs.csv, summary.json, figure.png, pretrain_curves.csv into ``out_dir``."""
    long = collect(params, runs_dir)
    summary = summarize(long)
    extra = params.get("report", {}).get("published_extra", [])
    tab = table(summary, long, load_published(extra))
    files = {name: out_dir / name for name in ("table.csv", "table.md", "runs.csv", "summary.json", "figure.png",
                                                "pretrain_curves.csv")}
    _write(files["table.csv"], tab.to_csv(index=False))
    _write(files["table.md"], markdown(tab, params.get("scale", "custom")))
    _write(files["runs.csv"], long.to_csv(index=False))
    _write(files["summary.json"], json.dumps(summary_metrics(summary), indent=2, sort_keys=True))
    _write(files["pretrain_curves.csv"], pretrain_curves(params).to_csv(index=False))
    fig = figure(summary)
    tmp = files["figure.png"].with_name("figure.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, files["figure.png"])
    return list(files.values())
