"""The published numbers the project carries (with their sources), and how reproduced runs map onto them.

``resources/published/g2d_neurips2024.csv`` holds every number of the G2D camera-ready tables; ``other_sources.csv``
M-FLAG numbers reported elsewhere. RAD-DINO's tables are not entered yet: its rows show "not yet entered" and a user
adds them to a CSV of the same columns (``table,task,dataset,metric,method,fraction_pct,value,source``) passed as
``report.published_extra``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import pandas as pd

BUILTIN = ("g2d_neurips2024.csv", "other_sources.csv")

#: cxrbench method name -> the method's name in the papers' tables
METHOD_NAMES = {
    "random": "Random Init", "imagenet": "ImageNet Init", "convirt": "ConVIRT", "g2d": "G2D", "mflag": "M-FLAG",
    "raddino": "RAD-DINO",
}
#: where a paper names the method differently for one task (G2D's frozen-encoder vs encoder-decoder segmentation)
METHOD_TASK_NAMES = {
    ("g2d", "segmentation"): "G2D (encoder)",
    ("g2d", "segmentation_ed"): "G2D (encoder-decoder)",
}
TASK_NAMES = {
    "linear": "linear classification", "finetune": "fine-tuned classification", "segmentation": "segmentation",
    "segmentation_ed": "segmentation",
    "detection": "detection", "zeroshot": "zero-shot classification", "grounding": "zero-shot grounding",
}
DATASET_NAMES = {
    "chexpert": "CheXpert", "rsna": "RSNA", "covidx": "COVIDx", "nih": "ChestX-ray14", "siim": "SIIM",
    "object_cxr": "Object-CXR", "ms_cxr": "MS-CXR",
}
#: reproduced metric key (metrics.json) -> published metric name; the reference forms are what the papers measured
METRIC_NAMES = {
    "AUROC": "AUROC", "ACC": "ACC", "F1": "F1", "Dice@reference": "Dice", "mAP@reference": "mAP",
    "PointingGame": "Recall", "IoU": "IoU", "Dice": "Dice",
}


#: matrix method name -> published row name: a method of the papers' tables, or ``"ablation: <Table 5 row>"``
#: for a derived G2D entry. ``report.published_rows`` (when given) is merged over this default.
PUBLISHED_ROWS = {
    **METHOD_NAMES,
    "g2d_p75": "ablation: threshold: 75th percentile", "g2d_median": "ablation: threshold: median",
    "g2d_gmm": "ablation: threshold: GMM", "g2d_heads1": "ablation: heads 1", "g2d_heads2": "ablation: heads 2",
    "g2d_heads4": "ablation: heads 4", "g2d_proj256": "ablation: projector dim 256",
    "g2d_proj512": "ablation: projector dim 512", "g2d_dec_none": "ablation: decoder loss: none",
    "g2d_dec_recon": "ablation: decoder loss: reconstruction", "g2d_no_body_mask": "ablation: without body mask",
    "g2d_no_edge_smoothing": "ablation: without edge smoothing",
    "g2d_no_head_agg": "ablation: without head aggregation",
    "g2d_shuffled": "ablation: shuffled pseudo masks (Table 8)",
}
#: Table 5's full-model row: the G2D defaults (85th percentile, pseudo-segmentation decoder loss)
FULL_MODEL_ABLATION = "decoder loss: pseudo seg"
#: published row names whose paper tables are not in the project (their published cells say so)
NOT_ENTERED = ("RAD-DINO",)
#: (published row, project task) -> the row's name in tables that split it by setting (G2D Table 1)
ROW_TASK_NAMES = {
    ("G2D", "segmentation"): "G2D (encoder)", ("G2D", "detection"): "G2D (encoder)",
    ("G2D", "segmentation_ed"): "G2D (encoder-decoder)",
}
#: project task -> published task for the Table 7 settings (the lead's matrix names them; unknown tasks stay blank)
PUBLISHED_TASKS = {
    **TASK_NAMES, "segmentation_ft": "segmentation (encoder updated)",
    "finetune_medklip": "fine-tuned classification (MedKLIP split)",
}


def published_rows(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The matrix-method -> published-row mapping: :data:`PUBLISHED_ROWS` with ``overrides`` on top."""
    return {**PUBLISHED_ROWS, **dict(overrides or {})}


COLUMNS = ("table", "task", "dataset", "metric", "method", "fraction_pct", "value", "source")


def read_user_csv(path: str | Path) -> pd.DataFrame:
    """One user CSV of published values (``report.published_extra``; docs/published_values.md): a missing file or
    a missing column is an error naming the file and what it lacks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report.published_extra: {path} does not exist (a CSV with columns "
                                f"{','.join(COLUMNS)}; see docs/published_values.md)")
    frame = pd.read_csv(path, dtype={"fraction_pct": "string"})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header must be {','.join(COLUMNS)}")
    return frame


def load_published(extra: Iterable[str | Path] = ()) -> pd.DataFrame:
    """All published rows: the built-in tables plus any user CSVs of the same columns."""
    folder = resources.files("cxrbench.resources").joinpath("published")
    frames = [pd.read_csv(folder.joinpath(name).open(), dtype={"fraction_pct": "string"}) for name in BUILTIN]
    frames += [read_user_csv(path) for path in extra]
    table = pd.concat(frames, ignore_index=True)
    table["value_num"] = pd.to_numeric(table["value"], errors="coerce")
    return table


def published_for(table: pd.DataFrame, method: str, task: str, dataset: str, metric: str, fraction: int) -> dict:
    """The published row matching one reproduced cell: {"published": value or note, "source": ...}.

    Zero-shot rows carry no fraction in the papers; trained tasks match on the fraction. A method with no published
    row at all (RAD-DINO here) says "not yet entered", a method whose paper lacks this cell says "not reported".
    """
    name = METHOD_NAMES.get(method)
    if name is None or not (table["method"] == name).any():
        return {"published": "not yet entered", "source": ""}
    name = METHOD_TASK_NAMES.get((method, task), name)
    rows = table[
        (table["method"] == name)
        & (table["task"] == TASK_NAMES.get(task))
        & (table["dataset"] == DATASET_NAMES.get(dataset))
        & (table["metric"] == METRIC_NAMES.get(metric, metric))
    ]
    if task not in ("zeroshot", "grounding"):
        rows = rows[rows["fraction_pct"] == str(fraction)]
    if rows.empty:
        return {"published": "not reported", "source": ""}
    row = rows.iloc[0]
    return {"published": row["value"], "source": f"{row['table']}: {row['source']}"}
