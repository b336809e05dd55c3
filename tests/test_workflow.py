"""Snakemake, DVC and the matrix agree on what the pipeline produces."""

import re
import subprocess
import sys
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
