# Shared definitions: validated parameters, matrix targets, the conda env, helpers the rules call.
import json
import os
import shlex

from cxrbench import config as cxconfig
from cxrbench import matrix

PARAMS = cxconfig.validate_params(config, source="Snakemake config (params.yaml)")
TARGETS = matrix.targets(PARAMS)
PATHS = PARAMS["paths"]
SYNTHETIC = PARAMS["synthetic"]
ENV = "../envs/cxrbench.yaml"
LOGS = "results/logs"
BENCH = "results/benchmarks"
# The stage command; conda jobs import the package from this checkout (no installation inside the env needed).
CLI = (
    "PYTHONPATH="
    + shlex.quote(os.path.join(workflow.basedir, "src"))
    + " python -m cxrbench"
)


wildcard_constraints:
    dataset="[a-z0-9_]+",
    method="[a-z0-9_]+",
    task="[a-z0-9_]+",
    fraction="[0-9]+",
    seed="[0-9]+",


def as_arg(obj):
    """A resolved parameter slice as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def raw_input(wildcards):
    """The synthetic generator's summary when the demo data is used, else the user's download directory."""
    if SYNTHETIC["enabled"]:
        return os.path.join(SYNTHETIC["out"], "SYNTHETIC.json")
    return matrix.raw_dir(PARAMS, wildcards.dataset)


def sync_dvc():
    """After a Snakemake run, record the completed phases in dvc.lock so `dvc status` agrees (skipped under DVC)."""
    if os.environ.get("CXRBENCH_UNDER_DVC") or not os.path.isdir(".dvc"):
        return
    shell("python -m cxrbench dvc-sync")
