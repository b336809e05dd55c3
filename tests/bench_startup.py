"""Benchmark (run with --benchmark-enable): what a job of the demo DAG pays before its work starts, and that
overhead's share of the demo (issue 10).

A stage job is a fresh ``python -m cxrbench <stage>`` process: the interpreter, the CLI and the modules its stage
imports (torch, torchvision, segmentation-models-pytorch, transformers ... for an evaluate job). Per phase, the
benchmark times a subprocess that imports exactly what that phase's command imports (an evaluate job: the stage
module, every task of the demo matrix and every method) and exits. ``extra_info`` records the seconds per job of each
phase, the demo's job count per phase (from the functions the Snakefile uses) and the share of the 8-minute, 2-core
budget that all jobs' start-ups take. The assertion is on that share, not on a time: at most 35% (measured here: ~5 s
for a data job, ~10 s for an evaluate job, ~25% in all), where one job per run (290 evaluate jobs) would be several
times the whole budget: what batching runs into one job (``evaluate.runs_per_job``) buys.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench import config, matrix

ROOT = Path(__file__).resolve().parents[1]
BUDGET_CORE_SECONDS = 8 * 60 * 2  # the demo's goal: 8 minutes on 2 cores
MAX_SHARE = 0.35


def phase_imports(params: dict) -> dict[str, str]:
    """Per phase, the imports of its stage command (``cxrbench.cli`` ``cmd_*``)."""
    tasks = sorted(set(params["matrix"]["tasks"]))
    methods = sorted({config.method_params(params, e)["method"] for e in params["matrix"]["methods"]})
    registry = "from cxrbench.registry import TASKS, METHODS\n"
    return {
        "generate": "import cxrbench.cli\nfrom cxrbench.data.synthetic import generate\n",
        "prepare": "import cxrbench.cli\nfrom cxrbench.data.prepare import prepare_dataset\n",
        "pretrain": f"import cxrbench.cli, cxrbench.pretrain\n{registry}[METHODS.get(m) for m in {methods!r}]\n",
        "evaluate": (f"import cxrbench.cli, cxrbench.evaluate\n{registry}[TASKS.get(t) for t in {tasks!r}]\n"
                     f"[METHODS.get(m) for m in {methods!r}]\n"),
        "audit": "import cxrbench.cli, cxrbench.audit\n",
        "report": "import cxrbench.cli\nfrom cxrbench.report import build_report\n",
    }


def demo_jobs(params: dict) -> dict[str, int]:
    """Jobs per phase of the demo DAG: the generator, a prepare per dataset, a pretraining per method, each method's
    evaluate chunks (``matrix.evaluate_jobs`` chunks one method's runs), the audit and the report."""
    return {
        "generate": int(bool(params["synthetic"]["enabled"])),
        "prepare": len(matrix.datasets(params)),
        "pretrain": len(params["matrix"]["methods"]),
        "evaluate": len(matrix.evaluate_jobs(params)) * len(params["matrix"]["methods"]),
        "audit": 1,
        "report": 1,
    }


def _start(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - t0


@pytest.mark.benchmark
def test_job_startup_share_of_demo(benchmark):
    params = config.load_params(ROOT / "params.yaml")
    codes = phase_imports(params)
    for code in codes.values():  # warm the page cache
        _start(code)
    times: dict[str, list[float]] = {phase: [] for phase in codes}

    def every_phase() -> None:
        for phase, code in codes.items():
            times[phase].append(_start(code))

    benchmark.pedantic(every_phase, rounds=2, iterations=1)
    per_job = {phase: min(t) for phase, t in times.items()}
    jobs = demo_jobs(params)
    core_s = sum(jobs[p] * per_job[p] for p in jobs)
    share = core_s / BUDGET_CORE_SECONDS
    benchmark.extra_info.update({"startup_s_per_job": {p: round(t, 2) for p, t in per_job.items()}, "jobs": jobs,
                                 "startup_core_s": round(core_s, 1), "share_of_8min_2core_budget": round(share, 3)})
    assert share <= MAX_SHARE, benchmark.extra_info
