"""Snakemake, DVC and the matrix agree on what the pipeline produces."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cxrbench import matrix
from cxrbench.dvcsync import PHASE_RULES


def _dvc_stages(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def _declared(stage: dict) -> list[str]:
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []) or []:
            paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def _under(path: str, root: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(root) or PurePosixPath(root) in PurePosixPath(path).parents


def test_every_phase_target_is_a_dvc_output_of_that_phase(root, params):
    stages = _dvc_stages(root)
    for phase, targets in matrix.targets(params).items():
        outs = _declared(stages[phase])
        for target in targets:
            assert any(_under(target, out) for out in outs), f"{target} is not under any output of stage {phase}"
        for out in outs:
            assert any(_under(t, out) for t in targets), f"dvc stage {phase} declares {out}, which no target produces"


def test_each_dvc_stage_runs_its_snakemake_phase(root):
    stages = _dvc_stages(root)
    for phase, rule in PHASE_RULES.items():
        cmd = stages[phase]["cmd"].replace("${SMK}", "snakemake --quiet rules --cores all")
        assert re.search(rf"snakemake .*\b{rule}$", cmd), cmd


def test_dvc_params_exist_in_params_yaml(root, params):
    for name, stage in _dvc_stages(root).items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"dvc stage {name} tracks {key}, not in params.yaml"
                node = node[part]


@pytest.mark.slow  # a Snakemake plan of the 290-run demo matrix, ~13 s: make test stays under 3 minutes
def test_snakemake_plans_exactly_the_matrix(root, params):
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", "--cores", "1", "--nolock"],
        cwd=root, capture_output=True, text=True, check=True,
    )
    planned = {line.split("\t")[0] for line in out.stdout.splitlines()[1:] if "\t" in line}
    expected = set(matrix.all_targets(params))
    synthetic = f"{params['synthetic']['out']}/SYNTHETIC.json"
    assert planned - {synthetic} == expected


@pytest.mark.parametrize("rule_file", sorted((Path(__file__).parents[1] / "workflow" / "rules").glob("*.smk")))
def test_every_rule_declares_log_threads_resources_conda(rule_file):
    text = rule_file.read_text()
    rules = re.split(r"^rule ", text, flags=re.M)[1:]
    for body in rules:
        name = body.split(":")[0]
        for directive in ("log:", "threads:", "resources:", "conda:", "shell:"):
            assert f"    {directive}" in body, f"rule {name} in {rule_file.name} lacks {directive}"


def test_jobs_import_the_checkout_by_absolute_path(root):
    """Every stage command goes through common.smk's CLI (PYTHONPATH=<workflow.basedir>/src), never a relative path."""
    for rule_file in sorted((root / "workflow" / "rules").glob("*.smk")):
        text = rule_file.read_text()
        assert "PYTHONPATH=src" not in text, rule_file.name
        assert rule_file.name == "common.smk" or "python -m cxrbench" not in text, rule_file.name
    common = (root / "workflow" / "rules" / "common.smk").read_text()
    assert 'os.path.join(workflow.basedir, "src")' in common


def _dry_run_jobs(root: Path, workdir: Path, devices: int | None = None) -> list[dict]:
    """``snakemake -n -p`` from another working directory (--directory): rule, threads, resources, shell of each job."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    if devices:
        params["pretrain"]["engine"]["devices"] = devices
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "64", "--nolock", "-s", str(root / "Snakefile"),
         "--directory", str(workdir)],
        cwd=workdir, capture_output=True, text=True, check=True,
    )
    jobs, job = [], None
    for line in out.stdout.splitlines():
        if line.startswith("rule ") and line.endswith(":"):
            job = {"rule": line[5:-1]}
            jobs.append(job)
        elif job is not None and ":" in line and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            job[key] = value
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: "):]
    return jobs


@pytest.mark.slow  # a Snakemake plan of the 290-run demo matrix, ~13 s: make test stays under 3 minutes
def test_requests_from_params_torchrun_for_devices_and_jobs_run_from_any_directory(root, tmp_path):
    """One dry run from another directory with pretrain.engine.devices = 3: every job's request comes from params.yaml
    `resources`, trained methods launch torchrun with 3 processes (threads per process x 3), and every command
    imports the package by absolute path."""
    jobs = _dry_run_jobs(root, tmp_path, devices=3)
    res = yaml.safe_load((root / "params.yaml").read_text())["resources"]["pretrain"]["default"]
    pretrain = [j for j in jobs if j["rule"] == "pretrain"]
    trained = [j for j in pretrain if "random" not in j["wildcards"]]
    assert trained and len(trained) < len(pretrain)
    for job in pretrain:
        assert f"mem_mb={res['mem_mb']}" in job["resources"] and f"runtime={res['runtime']}" in job["resources"]
        assert job["threads"] == str(res["threads"] * 3)  # printed when > 1
    for job in trained:
        assert "-m torch.distributed.run --standalone --nproc_per_node=3 -m cxrbench pretrain" in job["shell"]
    for job in jobs:
        if job.get("shell", "None") != "None":  # the aggregate rules have no command
            assert f"PYTHONPATH={root / 'src'} " in job["shell"], job["shell"][:200]  # absolute: any cwd works


@pytest.mark.slow  # a Snakemake parse; conda itself cannot be installed here, so a stub answers `conda info`
def test_containerize_writes_a_dockerfile(root, tmp_path):
    stub = tmp_path / "bin" / "conda"
    stub.parent.mkdir()
    stub.write_text(textwrap.dedent("""\
        #!/bin/sh
        case "$1" in
          --version) echo "conda 24.11.0" ;;
          config) echo '{"get": {"channel_priority": "strict"}}' ;;
          *) echo '{"conda_prefix": "/opt/conda", "platform": "linux-64"}' ;;
        esac
        """))
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--containerize", "--nolock"], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("FROM condaforge/miniforge3")
    assert "COPY workflow/envs/cxrbench.yaml" in out and "conda env create" in out
    assert "torch==" in out  # the env file's pins, in the image's comment
