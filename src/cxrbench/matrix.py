"""The experiment matrix as one pure function of the parameters.

Snakemake's target lists, DVC's stage outputs and the report all come from here, so they can never disagree on what the
pipeline produces. Nothing here imports torch or touches the disk: the Snakefile calls it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any


@dataclass(frozen=True, order=True)
class Run:
    """One downstream run: method x task x dataset x fraction x seed."""

    method: str
    task: str
    dataset: str
    fraction: int
    seed: int

    def directory(self, runs_root: str) -> str:
        return str(PurePosixPath(runs_root, self.method, self.task, self.dataset, f"f{self.fraction}", f"s{self.seed}"))

    def metrics_path(self, runs_root: str) -> str:
        return str(PurePosixPath(self.directory(runs_root), "metrics.json"))


def runs(params: Mapping[str, Any]) -> list[Run]:
    """Every run of the matrix, sorted. A task section may narrow ``fractions`` / ``seeds`` (zero-shot tasks train
    nothing, so they run at fraction 100 with one seed)."""
    matrix = params["matrix"]
    out = []
    for task in matrix["tasks"]:
        section = params["evaluate"]["tasks"][task]
        fractions = section.get("fractions", matrix["fractions"])
        seeds = section.get("seeds", matrix["seeds"])
        for method in matrix["methods"]:
            for dataset in section["datasets"]:
                out += [Run(method, task, dataset, int(f), int(s)) for f in fractions for s in seeds]
    return sorted(set(out))


@dataclass(frozen=True, order=True)
class RunTemplate:
    """A run without its method: every method of the matrix runs the same templates."""

    task: str
    dataset: str
    fraction: int
    seed: int

    def metrics_path(self, runs_root: str, method: str = "{method}") -> str:
        return Run(method, self.task, self.dataset, self.fraction, self.seed).metrics_path(runs_root)

    def spec(self) -> str:
        """``task:dataset:fraction:seed``, what ``cxrbench evaluate --runs`` takes."""
        return f"{self.task}:{self.dataset}:{self.fraction}:{self.seed}"

    @classmethod
    def parse(cls, spec: str) -> RunTemplate:
        parts = spec.split(":")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise ValueError(f"run {spec!r}: expected task:dataset:fraction:seed, e.g. linear:rsna:10:0")
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))


def run_templates(params: Mapping[str, Any]) -> list[RunTemplate]:
    """The runs of one method, sorted (task, dataset, fraction, seed)."""
    return sorted({RunTemplate(r.task, r.dataset, r.fraction, r.seed) for r in runs(params)})


def evaluate_jobs(params: Mapping[str, Any]) -> list[list[RunTemplate]]:
    """The evaluate phase's jobs for one method: its run templates in consecutive chunks of
    ``evaluate.runs_per_job`` (default 1: one run per job, what a cluster wants at paper scale). A job runs its
    chunk in one process, so the Python start-up (torch, torchvision, scikit-learn: seconds) is paid once per chunk
    rather than once per run; frozen features are shared through the feature cache either way."""
    k = int(params["evaluate"].get("runs_per_job", 1))
    templates = run_templates(params)
    return [templates[i : i + k] for i in range(0, len(templates), k)]


#: Scheduling priorities (Snakemake ``priority``: among the jobs ready to run, higher first). The critical path is
#: prepare(pretraining corpus) -> pretrain -> evaluate; the other stores are short and only needed by evaluate jobs,
#: so on a 2-core machine the corpus goes first and every pretraining (the longest jobs) starts as soon as it can.
PRIORITY = {"corpus": 20, "pretrain": 10, "prepare": 0, "evaluate": 0}


def prepare_priority(params: Mapping[str, Any], dataset: str) -> int:
    """The prepare job's priority: the pretraining corpus (and the stores it needs) before the others."""
    corpus = params["pretrain"]["dataset"]
    first = {corpus, *params["data"]["datasets"][corpus].get("needs", [])}
    return PRIORITY["corpus"] if dataset in first else PRIORITY["prepare"]


def datasets(params: Mapping[str, Any]) -> list[str]:
    """Datasets that must be prepared: the pretraining corpus and every dataset a task of the matrix uses."""
    needed = {params["pretrain"]["dataset"]}
    for task in params["matrix"]["tasks"]:
        needed |= set(params["evaluate"]["tasks"][task]["datasets"])
    needed |= {dep for ds in list(needed) for dep in params["data"]["datasets"][ds].get("needs", [])}
    return sorted(needed)


def synthetic_datasets(params: Mapping[str, Any]) -> list[str]:
    """Datasets the synthetic generator writes (all those needed whose raw dir is the synthetic one)."""
    if not params["synthetic"]["enabled"]:
        return []
    return datasets(params)


def paths(params: Mapping[str, Any]) -> dict[str, str]:
    return dict(params["paths"])


def prepared_dir(params: Mapping[str, Any], dataset: str) -> str:
    return str(PurePosixPath(params["paths"]["prepared"], dataset))


def raw_dir(params: Mapping[str, Any], dataset: str) -> str:
    return str(params["data"]["datasets"][dataset]["raw"])


def checkpoint_dir(params: Mapping[str, Any], method: str) -> str:
    return str(PurePosixPath(params["paths"]["checkpoints"], method))


def report_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the report reads: the matrix (which runs exist) and its own section, nothing that changes a
    run's result, so a change to a training parameter reruns the report only through the runs it changes."""
    keep = ("datasets", "fractions", "seeds")
    sections = params["evaluate"]["tasks"]
    tasks = {t: {k: v for k, v in sections[t].items() if k in keep} for t in params["matrix"]["tasks"]}
    return {"matrix": params["matrix"], "evaluate": {"tasks": tasks}, "paths": params["paths"],
            "report": params["report"], "scale": params["scale"],
            "data": {"split_protocol": params["data"]["split_protocol"]},
            "audit": {k: params["audit"][k] for k in ("out", "exclude_contaminated")} if "audit" in params else {}}


REPORT_TABLES = ("g2d_table1", "g2d_table2a", "g2d_table2b", "g2d_table3", "g2d_table4", "g2d_table5", "g2d_table7",
                 "mflag_published")
#: tables of tasks without a published counterpart (``cxrbench.report.tables.TASK_TABLES`` builds each)
TASK_TABLES = ("metadata", "report_generation")
REPORT_FIGURES = ("data_efficiency", "auroc_heatmap", "pseudo_mask_gallery", "segmentation_examples",
                  "grounding_overlays", "detection_examples", "pretrain_loss")


def report_files(params: Mapping[str, Any]) -> dict[str, str]:
    """Every file the report writes, by key: ``<table>_{md,csv,tex,html}`` under tables/ (the papers' tables, the
    scorecard and the comparisons), ``metrics_<table>`` under metrics/, ``figure_<name>_{png,svg}`` under
    figures/, DVC plot data under plots/, and runs.csv, summary.json, pretrain_curves.csv."""
    root = params["paths"]["report"]
    names = {"summary": "summary.json", "runs_csv": "runs.csv", "curves": "pretrain_curves.csv",
             "plot_pretrain_loss": "plots/pretrain_loss.csv", "plot_efficiency": "plots/efficiency.csv"}
    for table in (*REPORT_TABLES, "scorecard", "comparisons", "contamination", "contamination_metrics",
                  *TASK_TABLES):
        names.update({f"{table}_{ext}": f"tables/{table}.{ext}" for ext in ("md", "csv", "tex", "html")})
    names.update({f"metrics_{table}": f"metrics/{table}.json" for table in REPORT_TABLES})
    for fig in REPORT_FIGURES:
        names.update({f"figure_{fig}_{ext}": f"figures/{fig}.{ext}" for ext in ("png", "svg")})
    return {k: str(PurePosixPath(root, v)) for k, v in names.items()}


def targets(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """Final targets per phase (what ``snakemake <phase>`` and the DVC stage of that phase produce)."""
    from cxrbench.audit import audit_file

    root = params["paths"]["runs"]
    return {
        "data": [prepared_dir(params, d) for d in datasets(params)],
        "pretrain": [checkpoint_dir(params, m) for m in params["matrix"]["methods"]],
        "evaluate": [r.metrics_path(root) for r in runs(params)],
        "audit": [audit_file(params)],
        "report": sorted(report_files(params).values()),
    }


def all_targets(params: Mapping[str, Any]) -> list[str]:
    return [t for phase in targets(params).values() for t in phase]
