"""Keep DVC's lock in step with what Snakemake built, so one working tree serves both orchestrators.

Snakemake decides staleness by timestamps (and params/code triggers), DVC by content hashes recorded in ``dvc.lock``.
After a Snakemake run the outputs are current but ``dvc.lock`` still describes the previous ones, so ``dvc status``
would call the phases changed. ``sync`` commits every ``dvc.yaml`` stage whose outputs all exist (``dvc commit``), which
records their hashes without running anything. A stage is committed only when Snakemake itself reports its phase
up to date (a dry run), so a partial run never blesses stale outputs of a later phase. (The opposite direction needs
nothing: ``dvc repro`` runs Snakemake.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def complete_stages(root: Path) -> list[str]:
    """Names of the stages in ``root/dvc.yaml`` whose declared outputs (outs, metrics, plots) all exist."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    done = []
    for name, stage in stages.items():
        paths = []
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []) or []:
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
        if paths and all((root / p).exists() for p in paths):
            done.append(name)
    return done


#: dvc.yaml stage -> the Snakemake rule that builds that phase
PHASE_RULES = {
    "synthetic": "generate_synthetic", "data": "data", "pretrain": "pretrain_all", "evaluate": "evaluate_all",
    "report": "all",
}


def snakemake_up_to_date(root: Path, rule: str) -> bool:
    """True when ``snakemake -n <rule>`` has nothing to do (``--nolock``: safe inside a running workflow)."""
    out = subprocess.run(
        ["snakemake", rule, "-n", "--nolock", "--quiet", "rules"], cwd=root, capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr


def sync(root: Path, *, force: bool = True) -> int:
    """``dvc commit`` the complete stages; returns the exit code of DVC (0 when there is nothing to do)."""
    if not (root / ".dvc").is_dir():
        print("dvc-sync: not a DVC repository (no .dvc/): nothing to record", file=sys.stderr)
        return 0
    complete = [s for s in complete_stages(root) if s in PHASE_RULES]
    if snakemake_up_to_date(root, PHASE_RULES["report"]):  # the default target names every phase's outputs
        stages = complete
    else:
        stages = [s for s in complete if s != "report" and snakemake_up_to_date(root, PHASE_RULES[s])]
    if not stages:
        return 0
    cmd = ["dvc", "commit", "--quiet", *(["--force"] if force else []), *stages]
    print("dvc-sync:", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=root, check=False).returncode
