# Shared definitions: validated parameters, matrix targets, the conda env, helpers the rules call.
import json
import os
import shlex
import sys

# This checkout's package, whatever else is installed: the Snakefile parses with the code its jobs run (they get the
# same directory through PYTHONPATH, see CLI), also inside a cluster job or a copy of the project.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from cxrbench import config as cxconfig
from cxrbench import matrix

PARAMS = cxconfig.validate_params(
    config, source="Snakemake config (params.yaml)", files=workflow.configfiles
)
TARGETS = matrix.targets(PARAMS)
PATHS = PARAMS["paths"]
SYNTHETIC = PARAMS["synthetic"]
ENV = "../envs/cxrbench.yaml"
LOGS = "results/logs"
BENCH = "results/benchmarks"
# The stage command. Jobs import the package from this checkout whatever their working directory (an absolute path
# from workflow.basedir, the directory of the Snakefile), so a conda env or a cluster node needs no installation.
PYTHONPATH = f"PYTHONPATH={shlex.quote(os.path.join(workflow.basedir, 'src'))}"
CLI = f"{PYTHONPATH} python -m cxrbench"
RESOURCES = PARAMS.get("resources", {})
FALLBACK_REQUEST = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpus": 0}


def as_arg(obj):
    """A resolved parameter slice as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def raw_input(wildcards):
    """The synthetic generator's summary when the demo data is used, else the user's download directory."""
    if SYNTHETIC["enabled"]:
        return os.path.join(SYNTHETIC["out"], "SYNTHETIC.json")
    return matrix.raw_dir(PARAMS, wildcards.dataset)


def sync_dvc():
    """After a Snakemake run: the pretraining curves to DVCLive (results/dvclive), and the completed phases recorded
    in dvc.lock so `dvc status` agrees (that part skipped under `dvc repro`, which records them itself).
    """
    if os.path.isdir(".dvc"):
        from cxrbench.dvcsync import sync_args

        args = sync_args(workflow, config, "params.yaml")
        shell(f"{CLI} dvc-sync {' '.join(shlex.quote(a) for a in args)}")


def request(rule, name=None):
    """One job's scheduler request from params.yaml `resources`: the rule's `default` under the entry named by the
    job's dataset / method / task (`name`). threads and gpus are per process, mem_mb per job, runtime in minutes.
    """
    entries = RESOURCES.get(rule, {})
    return {**FALLBACK_REQUEST, **entries.get("default", {}), **entries.get(name, {})}


def pretrain_devices(method):
    """Processes of one pretraining job (pretrain.engine.devices, a method's own engine overriding it)."""
    return int(cxconfig.method_params(PARAMS, method)["engine"].get("devices", 1))


def pretrain_launch(method):
    """The pretraining command: the CLI itself, or torchrun with one process per device (under the SLURM executor
    the job already runs inside an `srun` step holding the job's GPUs; several nodes: see README, Cluster).
    """
    n = pretrain_devices(method)
    if n == 1:
        return CLI
    return f"{PYTHONPATH} python -m torch.distributed.run --standalone --nproc_per_node={n} -m cxrbench"


def job_resources(rule, wildcard=None, processes=lambda wc: 1):
    """A rule's `threads:` and `resources:` as callables of the job's wildcards: the request of `request(rule,
    wildcards.<wildcard>)`, threads and gpus times the job's processes. Usage in a rule:
    THREADS, RES = job_resources("evaluate", "task"), then `threads: THREADS` and `resources: **RES`.
    """

    def value(key):
        def get(wc):
            req = request(rule, getattr(wc, wildcard) if wildcard else None)
            return req[key] * (processes(wc) if key in ("threads", "gpus") else 1)

        return get

    # `gpu` is what the SLURM executor turns into --gpus (0: none asked)
    return value("threads"), {
        "mem_mb": value("mem_mb"),
        "runtime": value("runtime"),
        "gpu": value("gpus"),
    }


def stop_on_sigterm():
    """SIGTERM (a `kill`, the end of a head job's time limit) stops the run as Ctrl-C does: Snakemake cancels the
    running jobs (scancel on SLURM) and releases its lock, so no --unlock is needed. Snakemake's own SIGTERM handler
    would wait for every running job to finish, hours for a pretraining."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)


def announce_results():
    """A finished run says where its results are."""
    out = PATHS["report"]
    shown = sorted(os.listdir(out)) if os.path.isdir(out) else []
    print(
        f"cxrbench: results in {out}/: {', '.join(shown) or 'nothing yet'}",
        file=sys.stderr,
    )
    print(
        f"cxrbench: runs in {PATHS['runs']}/, checkpoints in {PATHS['checkpoints']}/, logs in {LOGS}/",
        file=sys.stderr,
    )


def constant(value):
    """A params entry Snakemake leaves as it is (a plain string with braces, e.g. a prompt, would be a wildcard)."""
    return lambda wildcards: value


def chunk_request(chunk):
    """A chunk's scheduler request: the largest per-task request of its runs; runtimes add up."""
    reqs = [request("evaluate", t.task) for t in chunk]
    out = {k: max(r[k] for r in reqs) for k in ("threads", "mem_mb", "gpus")}
    out["runtime"] = sum(r["runtime"] for r in reqs)
    return out


# Snakemake's report() output flag under another name: snakefmt reads a line starting "report(" as the directive
from snakemake.io import report as mark_for_report


def report_outputs():
    """The report's files (matrix.report_files); the HTML tables, the PNG figures and runs.csv marked for
    `snakemake --report report.html`, each with its caption from workflow/report/."""
    out = []
    for key, path in sorted(matrix.report_files(PARAMS).items()):
        table, _, ext = key.rpartition("_")
        if key.startswith("figure_") and ext == "png":
            name = table.removeprefix("figure_")
            out.append(
                mark_for_report(
                    path,
                    caption=f"../report/figure_{name}.rst",
                    category="Figures",
                    labels={"figure": name},
                )
            )
        elif ext == "html":
            group = (
                "Uncertainty and comparisons"
                if table
                in (
                    "scorecard",
                    "comparisons",
                    "contamination",
                    "contamination_metrics",
                )
                else "Published vs reproduced"
            )
            out.append(
                mark_for_report(
                    path,
                    caption=f"../report/table_{table}.rst",
                    category=group,
                    labels={"table": table},
                )
            )
        elif key == "runs_csv":
            out.append(
                mark_for_report(
                    path,
                    caption="../report/runs.rst",
                    category="Uncertainty and comparisons",
                    labels={"table": "runs"},
                )
            )
        else:
            out.append(path)
    return out
