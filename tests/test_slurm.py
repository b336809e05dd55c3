"""The CI matrix through `snakemake --profile workflow/profiles/slurm` on a real single-node SLURM (slow).

.ci/run installs slurm-wlm + munge and starts the daemons (.ci/slurm.sh up); run alone, this test starts them itself
when it can (root) and stops what it started, or skips saying why. One scenario, in order:
1. SIGTERM to the head snakemake while a job runs: it exits promptly, cancels its SLURM jobs, leaves no lock;
2. the whole DAG (the CI matrix's pretraining, a narrowed downstream matrix: OVERLAY) through the profile as shipped,
   with the pretraining job of `convirt` cancelled (`scancel`) mid-training: Snakemake resubmits it (retries) and
   it resumes from its last checkpoint;
3. `dvc push`, the data / checkpoints / runs deleted, `dvc pull`, `snakemake --touch`: both tools have nothing to do;
4. the resumed checkpoint equals, tensor for tensor, a pretraining run that was never interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["Snakefile", "dvc.yaml", "params.yaml", "pyproject.toml", "workflow", "src"]
# the test's only change to the shipped profile: poll squeue every few seconds instead of the default 40
FAST = ["--slurm-init-seconds-before-status-checks", "2"]
# one core per job so the 2-core CI node runs two jobs at a time; a checkpoint early enough to cancel after it. The
# pretraining is the CI matrix's (the cancel / resume and the bit-identity check need it); the downstream matrix is
# narrowed to one linear run per method (COVIDx, 100%): evaluate, audit and report jobs still go through the profile,
# and the CI matrix's own results are checked by tests/test_e2e.py.
OVERLAY = {
    "resources": {rule: {"default": {"threads": 1, "mem_mb": 2000, "runtime": 20, "gpus": 0}}
                  for rule in ("generate_synthetic", "prepare", "pretrain", "evaluate", "report")},
    "pretrain": {"engine": {"ckpt_every": 4, "ckpt_min_seconds": 0}},  # a checkpoint at step 4, to cancel after
    "matrix": {"tasks": ["linear"], "fractions": [100]},
    "evaluate": {"tasks": {"linear": {"datasets": ["covidx"]}}},
}


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def sh(cwd: Path, *cmd: str, timeout: float = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=False, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr


def node_up() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    if not (shutil.which("sbatch") and shutil.which("slurmctld")):
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; .ci/run installs and starts it)")
    if not (BIN / "snakemake").exists() or subprocess.run(
            [sys.executable, "-c", "import snakemake_executor_plugin_slurm"], check=False).returncode:
        pytest.skip('the SLURM executor plugin is not installed (pip install ".[slurm]")')
    started = False
    if not node_up():
        if os.geteuid() != 0:
            pytest.skip("SLURM is installed but not running; start it with `sudo bash .ci/slurm.sh up`")
        subprocess.run(["bash", str(ROOT / ".ci" / "slurm.sh"), "up"], check=True, timeout=120)
        started = True
    yield
    if started:
        subprocess.run(["bash", str(ROOT / ".ci" / "slurm.sh"), "down"], check=False, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("slurm_project")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    sh(work, sys.executable, "-m", "cxrbench", "use-params", "workflow/params/ci.yaml")
    (work / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    sh(work, sys.executable, "-m", "cxrbench", "use-params", "overlay.yaml")
    sh(work, "git", "init", "-q")
    sh(work, "git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-q", "--allow-empty", "-m", "0")
    sh(work, "dvc", "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", work / ".dvc" / "config")  # the shipped default remote
    return work


def our_jobs(work: Path) -> list[list[str]]:
    """[job id, comment, state] of the SLURM jobs whose working directory is this project."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T|%Z"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return [r[:3] for r in rows if Path(r[3]).resolve() == work.resolve()]


def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def head(work: Path, *args: str) -> subprocess.Popen:
    log = open(work / "head.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(["snakemake", "--profile", "workflow/profiles/slurm", *FAST, *args], cwd=work,
                            env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_ci_matrix_on_slurm(slurm, project):
    work = project
    # 1. SIGTERM stops the head cleanly: its jobs cancelled, no lock left
    proc = head(work)
    wait_for(lambda: our_jobs(work), 120, "a first SLURM job")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=90)
    wait_for(lambda: not our_jobs(work), 60, "the head's jobs to be cancelled")
    assert not list((work / ".snakemake" / "locks").glob("*")), "a lock is left: --unlock would be needed"
    sh(work, "snakemake", "-n", "--cores", "1")  # no --unlock needed

    # 2. the whole matrix, the convirt pretraining cancelled once it has written a checkpoint
    proc = head(work)
    ckpt = work / "data" / "checkpoints.work" / "convirt" / "last.ckpt"

    def convirt_running():
        jobs = [j for j in our_jobs(work) if j[1] == "rule_pretrain_wildcards_convirt" and j[2] == "RUNNING"]
        return jobs[0][0] if jobs and ckpt.is_file() else None

    job = wait_for(convirt_running, 600, "convirt's pretraining to write a checkpoint", step=0.1)
    subprocess.run(["scancel", job], check=True)
    cancelled_at = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
    assert proc.wait(timeout=900) == 0, (work / "head.log").read_text()[-5000:]
    text = (work / "head.log").read_text()
    assert f"SLURM-job '{job}' failed" in text and "Trying to restart job" in text, "no retry after the cancel"
    resumed = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert resumed["done"] and resumed["step"] > cancelled_at
    assert "cxrbench: results in results/report/" in text  # onsuccess says where the results are
    summary = work / "results" / "report" / "summary.json"
    assert summary.is_file()
    assert "Nothing to be done" in sh(work, "snakemake", "-n", "--cores", "1")
    assert "up to date" in sh(work, "dvc", "status")
    state = torch.load(work / "data" / "checkpoints" / "convirt" / "model.pt", map_location="cpu",
                       weights_only=False)["state_dict"]

    # 3. dvc push / pull of data, checkpoints and runs, then snakemake --touch: both tools agree
    sh(work, "dvc", "push")
    assert any((work / ".dvc-remote").rglob("*")), "nothing pushed to the default remote"
    for top in ("data/prepared", "data/checkpoints", "results/runs"):
        shutil.rmtree(work / top)
    shutil.rmtree(work / ".dvc" / "cache")
    sh(work, "dvc", "pull")
    assert (work / "data" / "checkpoints" / "convirt" / "model.pt").is_file()
    sh(work, "snakemake", "--touch", "--cores", "1", "--quiet")
    assert "Nothing to be done" in sh(work, "snakemake", "-n", "--cores", "1")
    assert "up to date" in sh(work, "dvc", "status")

    # 4. an uninterrupted pretraining (locally) gives the same tensors as the cancelled-and-resumed one
    shutil.rmtree(work / "data" / "checkpoints.work" / "convirt")
    sh(work, "snakemake", "--cores", "2", "--forcerun", "pretrain", "--", "data/checkpoints/convirt")
    fresh = torch.load(work / "data" / "checkpoints" / "convirt" / "model.pt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert fresh.keys() == state.keys()
    different = [k for k in state if not same(state[k], fresh[k])]
    assert not different, f"resume after scancel is not bit-identical: {different[:5]}"


def same(a, b) -> bool:
    """Bit-identical: tensors by torch.equal, containers element by element, anything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
