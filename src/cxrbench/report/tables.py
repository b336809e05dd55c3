"""The papers' tables in their own shape, each cell "published | reproduced mean [95% interval]".

A :class:`PaperTable` names one published table; :func:`paper_table` lays it out from the published cells
(``resources/published``) and the reproduced summary (:func:`cxrbench.report.runs.summarize`): the paper's rows
(every method it lists, reproduced part blank when the matrix did not run it), the paper's columns, then the
matrix methods the paper does not list (RAD-DINO: published part "not yet entered"). :func:`scorecard` lists every
published number that has a reproduced value. Writers give Markdown, CSV and LaTeX (booktabs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cxrbench.report.published import (
    DATASET_NAMES,
    FULL_MODEL_ABLATION,
    METRIC_NAMES,
    NOT_ENTERED,
    PUBLISHED_TASKS,
    ROW_TASK_NAMES,
)

DEMO_WARNING = "synthetic demo data, not comparable to the published values"
ZERO_SHOT = ("zeroshot", "grounding")
COLUMN = ["task", "dataset", "metric", "fraction"]


@dataclass(frozen=True)
class PaperTable:
    """One published table: ``name`` (file stem), the ``table`` value of its published rows, a title, and what its
    metric form is (stated above the table)."""

    name: str
    table: str
    title: str
    form: str
    notes: tuple[str, ...] = field(default_factory=tuple)


_SEG_DET = ("Dice and mAP in their reference forms (MGCA: empty-mask Dice quirk, batch means; mAP over images "
            "with >= 1 detection and >= 1 box), as published; strict forms in runs.csv")
TABLES: tuple[PaperTable, ...] = (
    PaperTable("g2d_table1", "Table 1", "G2D Table 1: semantic segmentation (Dice) and object detection (mAP)",
               _SEG_DET),
    PaperTable("g2d_table2a", "Table 2a", "G2D Table 2a: zero-shot visual grounding",
               "pointing game (recall), IoU and Dice of the binarised similarity map"),
    PaperTable("g2d_table2b", "Table 2b", "G2D Table 2b: zero-shot image classification",
               "AUROC; F1 and ACC at the max-F1 threshold chosen on the test set (as published)"),
    PaperTable("g2d_table3", "Table 3", "G2D Table 3: fine-tuned classification on ChestX-ray14, per disease",
               "AUROC per disease and macro mean (sklearn roc_auc_score)"),
    PaperTable("g2d_table4", "Table 4", "G2D Table 4: linear classification",
               "AUROC (CheXpert macro over 5 labels, RSNA), accuracy (COVIDx)"),
    PaperTable("g2d_table5", "Table 5", "G2D Table 5 (and Table 8): ablations at 1% training data",
               _SEG_DET, ("Rows are derived G2D matrix entries (report.published_rows maps them); the full model "
                          f"row is '{FULL_MODEL_ABLATION}'.",)),
    PaperTable("g2d_table7", "Table 7", "G2D Table 7: segmentation with the encoder updated; NIH fine-tuning on "
               "MedKLIP's split", _SEG_DET,
               ("Reproduced cells come from the tasks segmentation_ft (encoder fine-tuned with the U-Net decoder) "
                "and finetune_medklip when the matrix runs them.",
                "MedKLIP's ChestX-ray14 split is not public: its repository ships only the test list (the official "
                "test_list.txt), not its train / valid files, so the MedKLIP-split cells are n/a unless "
                "evaluate.tasks.finetune_medklip.split_files points at the three files.")),
    PaperTable("mflag_published", "M-FLAG", "M-FLAG's published numbers (from G2D Table 1 and other sources)",
               _SEG_DET, ("Sources that do not state a training fraction are placed at 100%.",)),
)


def _norm_fraction(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>" \
        else str(value)


def published_cells(published: pd.DataFrame, spec: PaperTable) -> pd.DataFrame:
    """The table's published cells as rows (row, task, dataset, metric, fraction, value, source), in paper order.
    Table 5's rows are its ablation settings; the M-FLAG table gathers every M-FLAG row, one row per source."""
    if spec.table == "M-FLAG":
        part = published[published["method"] == "M-FLAG"].copy()
        source = part["table"].str.replace("aggregator", "benchmark aggregator").str.replace(r"^Table", "G2D Table",
                                                                                               regex=True)
        part["row"] = "M-FLAG (" + source + ")"
        trained = ~part["task"].str.startswith("zero-shot")
        part["fraction_pct"] = [f if (f or not t) else "100" for f, t in
                                zip(part["fraction_pct"].map(_norm_fraction), trained, strict=True)]
    else:
        part = published[published["table"] == spec.table].copy()
        part["row"] = part["method"]
    if spec.table == "Table 5":
        split = part["task"].str.split(" | ", n=1, regex=False)
        part["row"] = split.str[0].str.removeprefix("ablation: ")
        part["task"] = split.str[1]
    part["fraction"] = part["fraction_pct"].map(_norm_fraction)
    return part[["row", *COLUMN, "value", "source"]].reset_index(drop=True)


def _published_metric(metric: str) -> str | None:
    """A metrics.json key in the published tables' naming; a label's underscores are the dataset's spelling
    (NIH ``Pleural_Thickening``), the papers print spaces."""
    if metric.startswith("AUROC/"):
        return "AUROC:" + metric.split("/", 1)[1].replace("_", " ")
    return METRIC_NAMES.get(metric)


def _row_name(method: str, task: str, rows: Mapping[str, str], spec: PaperTable, table_rows: set[str]) -> str | None:
    """The table row a matrix method's run lands in (``None``: not in this table)."""
    name = rows.get(method, method)
    ablation = name.startswith("ablation: ")
    if spec.table == "Table 5":
        return name.removeprefix("ablation: ") if ablation else FULL_MODEL_ABLATION if name == "G2D" else None
    if ablation:
        return None
    if spec.table == "M-FLAG":
        return name if name == "M-FLAG" else None
    variant = ROW_TASK_NAMES.get((name, task))
    if variant in table_rows:
        return variant
    return None if task == "segmentation_ed" else name  # the encoder-decoder setting has rows of its own only


def reproduced_cells(summary: pd.DataFrame, rows: Mapping[str, str], spec: PaperTable,
                     table_rows: set[str]) -> pd.DataFrame:
    """The summary in the table's naming: row, task, dataset, metric, fraction (published names) + method and the
    summary's statistics (mean, sd, n, low, high in [0, 1])."""
    out = []
    for rec in summary.to_dict("records"):
        metric = _published_metric(rec["metric"])
        row = _row_name(rec["method"], rec["task"], rows, spec, table_rows)
        if metric is None or row is None:
            continue
        fraction = "" if rec["task"] in ZERO_SHOT else str(rec["fraction"])
        out.append({**rec, "row": row, "task": PUBLISHED_TASKS.get(rec["task"], rec["task"]),
                    "dataset": DATASET_NAMES.get(rec["dataset"], rec["dataset"]), "metric": metric,
                    "fraction": fraction})
    return pd.DataFrame(out, columns=["row", *COLUMN, "method", "mean", "sd", "n", "low", "high"])


def fmt_reproduced(rec: Mapping[str, Any] | None) -> str:
    """``mean [low, high]`` (``mean ± sd [low, high]`` over several seeds) in percent; blank without a value."""
    if rec is None or not _finite(rec.get("mean")):
        return ""
    text = f"{100 * rec['mean']:.1f}"
    if rec.get("n", 1) > 1 and _finite(rec.get("sd")):
        text += f" ± {100 * rec['sd']:.1f}"
    if _finite(rec.get("low")) and _finite(rec.get("high")):
        text += f" [{100 * rec['low']:.1f}, {100 * rec['high']:.1f}]"
    return text


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def column_labels(cols: Sequence[tuple]) -> list[str]:
    """Readable labels from (task, dataset, metric, fraction) keys: only the parts that vary, fraction as '1%';
    Table 3's 'AUROC:<disease>' shows as the disease, its macro 'AUROC' as 'Mean'."""
    varies = [len({c[i] for c in cols}) > 1 for i in range(3)]
    per_disease = any(str(c[2]).startswith("AUROC:") for c in cols)
    labels = []
    for task, dataset, metric, fraction in cols:
        parts = [task] if varies[0] else []
        parts += [dataset] if varies[1] else []
        if per_disease:
            parts.append(metric.split(":", 1)[1] if ":" in metric else "Mean")
        elif varies[2]:
            parts.append(metric)
        parts += [f"{fraction}%"] if fraction else []
        labels.append(" ".join(parts) or metric)
    return labels


def paper_table(spec: PaperTable, published: pd.DataFrame, summary: pd.DataFrame, long: pd.DataFrame,
                rows: Mapping[str, str], methods: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """(table, notes): one row per published method then per reproduced-only method, one column per published
    (task, dataset, metric, fraction), each cell ``"<published> | <reproduced>"``."""
    pub = published_cells(published, spec)
    table_rows = list(dict.fromkeys(pub["row"]))
    rep = reproduced_cells(summary, rows, spec, set(table_rows))
    cols = list(dict.fromkeys(map(tuple, pub[COLUMN].itertuples(index=False, name=None))))
    pub_map = {(r["row"], *[r[c] for c in COLUMN]): str(r["value"]) for r in pub.to_dict("records")}
    rep_map = {(r["row"], *[r[c] for c in COLUMN]): r for r in rep.to_dict("records")}
    extra = _extra_rows(methods, rows, spec, set(table_rows))
    notes = _not_applicable(long, rows, spec, set(table_rows) | {r for r, _ in extra}, {c[0] for c in cols})
    data = []
    for row, unpublished in [(r, None) for r in table_rows] + extra:
        cells = {}
        for col, label in zip(cols, column_labels(cols), strict=True):
            published_part = unpublished or pub_map.get((row, *col), "")
            reproduced = fmt_reproduced(rep_map.get((_reproduced_row(spec, row), *col)))
            if not reproduced and (row, col[0]) in notes:
                reproduced = "n/a"
            cells[label] = f"{published_part} | {reproduced}".strip() if published_part or reproduced else ""
        data.append({"method": row, **cells})
    reasons = sorted({f"{r}, {t}: n/a, {why}" for (r, t), why in notes.items()})
    return pd.DataFrame(data, columns=["method", *column_labels(cols)]), reasons


def _reproduced_row(spec: PaperTable, row: str) -> str:
    """The reproduced row a table row shows: every source row of the M-FLAG table shows the one M-FLAG run."""
    return "M-FLAG" if spec.table == "M-FLAG" and row.startswith("M-FLAG (") else row


def _extra_rows(methods: Sequence[str], rows: Mapping[str, str], spec: PaperTable,
                table_rows: set[str]) -> list[tuple[str, str]]:
    """Matrix methods the table does not list: (row name, what the published part says)."""
    out = []
    for m in methods:
        name = rows.get(m, m)
        row = _row_name(m, "", rows, spec, table_rows)
        variants = {v for (n, _), v in ROW_TASK_NAMES.items() if n == name}
        if spec.table == "M-FLAG" or row is None or row in table_rows or variants & table_rows \
                or row in [r for r, _ in out]:
            continue
        out.append((row, "not yet entered" if name in NOT_ENTERED else "not published"))
    return out


def _not_applicable(long: pd.DataFrame, rows: Mapping[str, str], spec: PaperTable, table_rows: set[str],
                    tasks: set[str]) -> dict[tuple[str, str], str]:
    """{(row, published task): reason} for the runs the matrix recorded as not applicable."""
    na = long[long["status"] == "not_applicable"].drop_duplicates(["method", "task"])
    out = {}
    for rec in na.to_dict("records"):
        row = _row_name(rec["method"], rec["task"], rows, spec, table_rows)
        task = PUBLISHED_TASKS.get(rec["task"], rec["task"])
        if row is not None and task in tasks:
            out[(row, task)] = str(rec["reason"])
    return out


def scorecard(spec: PaperTable, published: pd.DataFrame, summary: pd.DataFrame, rows: Mapping[str, str],
              demo: bool) -> pd.DataFrame:
    """Every published number of the table that has a reproduced value: published, reproduced, interval, and
    (not at demo scale) the difference and whether the published value lies inside the reproduced interval."""
    pub = published_cells(published, spec)
    table_rows = set(pub["row"])
    rep = reproduced_cells(summary, rows, spec, table_rows)
    pub = pub.assign(rep_row=[_reproduced_row(spec, r) for r in pub["row"]])
    merged = pub.merge(rep.rename(columns={"row": "rep_row"}), on=["rep_row", *COLUMN], how="inner")
    merged["published_num"] = pd.to_numeric(merged["value"], errors="coerce")
    merged = merged[merged["published_num"].notna() & merged["mean"].notna()]
    cols = list(dict.fromkeys(map(tuple, pub[COLUMN].itertuples(index=False, name=None))))
    label = dict(zip(cols, column_labels(cols), strict=True))
    out = pd.DataFrame({
        "table": spec.name, "row": merged["row"], "column": [label[tuple(r)] for r in merged[COLUMN].values],
        "method": merged["method"], "published": merged["published_num"],
        "reproduced": (100 * merged["mean"]).round(2), "low": (100 * merged["low"]).round(2),
        "high": (100 * merged["high"]).round(2),
    })
    if not demo:
        out["difference"] = (out["reproduced"] - out["published"]).round(2)
        out["inside"] = [bool(lo <= p <= hi) if _finite(lo) and _finite(hi) else None
                         for p, lo, hi in zip(out["published"], out["low"], out["high"], strict=True)]
    return out.reset_index(drop=True)


# ---------------------------------------------------------------- writers


def header_notes(spec_notes: Sequence[str], context: Mapping[str, Any], cells: bool = True) -> list[str]:
    """The lines every table starts with: the demo warning first, then form, protocol, scale, seeds, intervals
    (``cells``: the note on the "published | reproduced" cell format, for the paper-shaped tables)."""
    lines = [f"**{DEMO_WARNING}**"] if context.get("scale") == "demo" else []
    lines += [
        f"Scale: {context.get('scale', 'custom')}. Split protocol: {context.get('split_protocol', 'not recorded')}. "
        f"Seeds: {context.get('seeds', [])}.",
        *spec_notes,
        f"Intervals: percentile bootstrap over test images ({context.get('resamples')} resamples, seed "
        f"{context.get('boot_seed')}) for one or two seeds (mean of the per-seed bounds), the t interval over "
        "seeds for three or more.",
    ]
    if cells:
        lines.append("Cells: published | reproduced mean over seeds (± sd when several) [95% interval], in percent; "
                     "a blank reproduced part: the matrix did not run it.")
    return lines


def to_markdown(title: str, notes: Sequence[str], table: pd.DataFrame) -> str:
    shown = table.astype(str).replace({r"\|": r"\\|"}, regex=True)
    return "\n".join([f"# {title}", "", *[f"- {n}" for n in notes], "", shown.to_markdown(index=False), ""])


def to_csv(notes: Sequence[str], table: pd.DataFrame) -> str:
    """CSV with the notes as leading ``#`` lines (read back with ``pandas.read_csv(path, comment="#")``)."""
    head = "".join(f"# {n.replace('**', '')}\n" for n in notes)
    return head + table.to_csv(index=False)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", "±": r"$\pm$",
        "<": r"\textless{}", ">": r"\textgreater{}"}


def tex_escape(text: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(title: str, notes: Sequence[str], table: pd.DataFrame) -> str:
    """A booktabs ``table`` environment: caption = title, the notes in a footnote-size paragraph below."""
    cols = list(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\scriptsize", rf"\caption{{{tex_escape(title)}}}",
             r"\begin{tabular}{l" + "c" * (len(cols) - 1) + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(v) for v in rec) + r" \\" for rec in table.astype(str).values.tolist()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip\footnotesize",
              " ".join(tex_escape(n.replace("**", "")) for n in notes), r"\end{table}", ""]
    return "\n".join(lines)


def to_html(title: str, notes: Sequence[str], table: pd.DataFrame) -> str:
    """A self-contained HTML page (what the Snakemake report shows): title, notes, the table."""
    import html

    items = "".join(f"<li>{html.escape(n).replace('**', '')}</li>" for n in notes)
    body = table.to_html(index=False, border=0, classes="cxr", na_rep="")
    style = ("body{font-family:sans-serif;font-size:12px} table.cxr{border-collapse:collapse} "
             "table.cxr td,table.cxr th{border-bottom:1px solid #ccc;padding:2px 6px;white-space:nowrap}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h2>{html.escape(title)}</h2><ul>{items}</ul>{body}</body></html>\n")


def table_metrics(spec: PaperTable, summary: pd.DataFrame, published: pd.DataFrame,
                  rows: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """{row: {column label: reproduced mean (fraction)}} of one table, for ``dvc metrics diff``."""
    pub = published_cells(published, spec)
    rep = reproduced_cells(summary, rows, spec, set(pub["row"]))
    cols = list(dict.fromkeys(map(tuple, pub[COLUMN].itertuples(index=False, name=None))))
    label = dict(zip(cols, column_labels(cols), strict=True))
    out: dict[str, dict[str, float]] = {}
    for rec in rep.to_dict("records"):
        key = (rec["task"], rec["dataset"], rec["metric"], rec["fraction"])
        if key in label and _finite(rec["mean"]):
            out.setdefault(rec["row"], {})[label[key]] = round(float(rec["mean"]), 6)
    return out


# ---------------------------------------------------------------- tables of tasks without a published counterpart

#: the metadata task's columns: (metric key, column label, scale, decimals)
METADATA_CELLS = (("sex/AUROC", "sex AUROC (%)", 100.0, 1), ("age/MAE", "age MAE (years)", 1.0, 1),
                  ("age/R2", "age R^2", 1.0, 2), ("age_group/AUROC", "age-group AUROC (%)", 100.0, 1))


def _metadata_cell(means: Mapping[str, float], metric: str, scale: float, decimals: int) -> str:
    """``mean [low, high]`` from the summary means of ``metric``, ``metric_low``, ``metric_high``; blank without."""
    value = means.get(metric)
    if not _finite(value):
        return ""
    text = f"{scale * value:.{decimals}f}"
    lo, hi = means.get(f"{metric}_low"), means.get(f"{metric}_high")
    return text + (f" [{scale * lo:.{decimals}f}, {scale * hi:.{decimals}f}]" if _finite(lo) and _finite(hi) else "")


def metadata_table(summary: pd.DataFrame, context: Mapping[str, Any]) -> tuple[list[str], pd.DataFrame]:
    """(notes, table) of the ``metadata`` task: one row per dataset, method and fraction, the columns of
    ``METADATA_CELLS``, each the mean over seeds with the mean of the run's own bootstrap bounds (the task saves no
    per-image predictions: ages and sexes stay in the store)."""
    part = summary[summary["task"] == "metadata"] if len(summary) else summary
    means = {(r["dataset"], r["method"], int(r["fraction"]), r["metric"]): r["mean"] for r in part.to_dict("records")}
    keys = sorted({k[:3] for k in means}, key=lambda k: (k[0], list(dict.fromkeys(part["method"])).index(k[1]), k[2]))
    rows = []
    for dataset, method, fraction in keys:
        cell = {m: v for (d, me, f, m), v in means.items() if (d, me, f) == (dataset, method, fraction)}
        rows.append({"dataset": DATASET_NAMES.get(dataset, dataset), "method": method, "fraction": f"{fraction}%",
                     **{label: _metadata_cell(cell, key, s, n) for key, label, s, n in METADATA_CELLS}})
    notes = [f"**{DEMO_WARNING}**"] if context.get("scale") == "demo" else []
    protocol, seeds = context.get("split_protocol", "not recorded"), context.get("seeds", [])
    notes += [f"Scale: {context.get('scale', 'custom')}. Split protocol: {protocol}. Seeds: {seeds}.",
              "RAD-DINO's evaluation beyond reports: sex, age and age group predicted by linear models on the frozen "
              "pooled feature (task metadata; its metric_forms in metrics.json). Images of unknown sex or age are "
              "left out of that target (counted in metrics.json 'n').",
              "Cells: mean over seeds [95% percentile bootstrap over test images, the task's own "
              "(evaluate.tasks.metadata.bootstrap)]; a blank cell: no run."]
    if not rows:
        notes.append("The matrix runs no metadata task.")
    return notes, pd.DataFrame(rows, columns=["dataset", "method", "fraction", *(c[1] for c in METADATA_CELLS)])


#: the report_generation task's columns: (metric key, column label); values in percent
REPORT_GENERATION_CELLS = (("BLEU-4", "BLEU-4"), ("ROUGE-L", "ROUGE-L"),
                           ("BLEU-4/shuffled_image", "BLEU-4, shuffled image"),
                           ("ROUGE-L/shuffled_image", "ROUGE-L, shuffled image"))


def report_generation_table(summary: pd.DataFrame, context: Mapping[str, Any]) -> tuple[list[str], pd.DataFrame]:
    """(notes, table) of the ``report_generation`` task: one row per dataset, method and fraction; BLEU-4 and
    ROUGE-L (x 100) with the summary's interval, the same decoder fed another test image's tokens, and the paired
    bootstrap p of BLEU-4 against that control (mean over seeds)."""
    part = summary[summary["task"] == "report_generation"] if len(summary) else summary
    recs = {(r["dataset"], r["method"], int(r["fraction"]), r["metric"]): r for r in part.to_dict("records")}
    order = list(dict.fromkeys(part["method"])) if len(part) else []
    rows = []
    for dataset, method, fraction in sorted({k[:3] for k in recs}, key=lambda k: (k[0], order.index(k[1]), k[2])):
        cell = {m: r for (d, me, f, m), r in recs.items() if (d, me, f) == (dataset, method, fraction)}
        p = cell.get("BLEU-4/shuffled_image_p", {}).get("mean")
        rows.append({"dataset": DATASET_NAMES.get(dataset, dataset), "method": method, "fraction": f"{fraction}%",
                     **{label: fmt_reproduced(cell.get(key)) for key, label in REPORT_GENERATION_CELLS},
                     "p (BLEU-4 vs shuffled)": f"{p:.3g}" if _finite(p) else ""})
    notes = [f"**{DEMO_WARNING}**"] if context.get("scale") == "demo" else []
    notes += [f"Scale: {context.get('scale', 'custom')}. Split: MIMIC-CXR's official split. "
              f"Seeds: {context.get('seeds', [])}.",
              "RAD-DINO's vision-language alignment: a causal LM decodes the report (greedy) from the frozen "
              "encoder's projected image tokens; BLEU-4 (sacrebleu, no smoothing) and ROUGE-L (torchmetrics) x 100, "
              "mean [95% interval]. Shuffled image: the same decoder fed another test image (a seeded derangement): "
              "what the text owes to the corpus rather than the image."]
    if not rows:
        notes.append("The matrix runs no report_generation task.")
    columns = ["dataset", "method", "fraction", *(c[1] for c in REPORT_GENERATION_CELLS), "p (BLEU-4 vs shuffled)"]
    return notes, pd.DataFrame(rows, columns=columns)

#: builders of the tables of tasks without a published counterpart, by file stem (``matrix.TASK_TABLES`` names
#: the files): stem -> (title, builder(summary, context) -> (notes, table))
TASK_TABLES: dict[str, tuple[str, Callable[[pd.DataFrame, Mapping[str, Any]], tuple[list[str], pd.DataFrame]]]] = {
    "metadata": ("Patient metadata from frozen image features (sex, age, age group)", metadata_table),
    "report_generation": ("Report generation from frozen image tokens (BLEU-4, ROUGE-L)", report_generation_table),
}
