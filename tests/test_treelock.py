"""`dvc repro` while Snakemake holds the tree refuses before touching dvc.lock (issue 12)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench.treelock import TreeBusy, check_tree


def locked(root: Path) -> Path:
    lock = root / ".snakemake" / "locks"
    lock.mkdir(parents=True)
    (lock / "0.input.lock").write_text(str(root / "params.yaml"))
    return lock


def test_free_tree_passes(tmp_path):
    check_tree(tmp_path)  # no locks: nothing to say


def test_live_run_is_named_and_refused(tmp_path):
    locked(tmp_path)
    # a process that looks like a Snakemake run in this tree: argv[0] "snakemake", cwd the tree
    proc = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 30"], cwd=tmp_path)
    try:
        for _ in range(50):  # until exec has replaced bash
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"snakemake"):
                break
            time.sleep(0.05)
        with pytest.raises(TreeBusy, match=rf"pid {proc.pid}\).*dvc.lock is unchanged"):
            check_tree(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_stale_locks_say_unlock(tmp_path):
    locked(tmp_path)
    with pytest.raises(TreeBusy, match="snakemake --unlock"):
        check_tree(tmp_path)


def test_dvc_stage_refuses_and_leaves_the_lock_file(tmp_path):
    """The command every dvc.yaml stage starts with exits 3 and prints the reason; dvc.lock is not written."""
    locked(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    before = (tmp_path / "dvc.lock").read_bytes()
    out = subprocess.run([sys.executable, "-m", "cxrbench", "check-tree"], cwd=tmp_path, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 3 and "snakemake --unlock" in out.stderr
    assert (tmp_path / "dvc.lock").read_bytes() == before
    dvc_yaml = (Path(__file__).resolve().parents[1] / "dvc.yaml").read_text()
    assert "SMK: python -m cxrbench check-tree && " in dvc_yaml
