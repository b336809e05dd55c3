"""cxrbench.batch: an evaluate job's chunk planned into cells and duplicates, run in one or several processes."""

from __future__ import annotations

import os

import pytest

from cxrbench import batch
from cxrbench.matrix import RunTemplate

T = [RunTemplate.parse(s) for s in ("linear:rsna:1:0", "linear:rsna:10:0", "finetune:nih:1:0", "linear:covidx:100:0",
                                    "finetune:nih:10:0", "linear:rsna:100:0")]
# 1% and 10% of a cell are the same rows (the demo's floor): the same work key
KEYS = {t.spec(): f"{t.task}/{t.dataset}/{'floor' if t.fraction < 100 else 100}" for t in T}
COST = {"linear": 1.0, "finetune": 15.0}


def test_plan_groups_cells_heaviest_first_and_finds_duplicates():
    p = batch.plan(T, lambda t: KEYS[t.spec()], COST.get)
    # by hand: finetune/nih (1 run left x 15) > linear/rsna (2 runs x 1) > linear/covidx (1 x 1)
    assert [[t.spec() for t in cell] for cell in p.cells] == [
        ["finetune:nih:1:0"], ["linear:rsna:1:0", "linear:rsna:100:0"], ["linear:covidx:100:0"]]
    assert p.reuse == {"linear:rsna:10:0": "linear:rsna:1:0", "finetune:nih:10:0": "finetune:nih:1:0"}
    none = batch.plan(T, lambda t: None, COST.get)  # no keys: every run computed
    assert sum(len(c) for c in none.cells) == len(T) and not none.reuse


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failed_run_costs_only_itself_and_the_runs_that_repeat_it(processes, tmp_path, capfd):
    def run_one(t):
        if t.task == "finetune":
            raise RuntimeError("boom")
        (tmp_path / f"{t.spec()}.pid").write_text(str(os.getpid()))
        return True

    def reuse_one(t, source):
        (tmp_path / f"{t.spec()}.from").write_text(source.spec())
        return True

    failed = batch.run_batch(T, run_one, reuse_one, lambda t: KEYS[t.spec()], COST.get, processes=processes)
    assert failed == ["finetune:nih:1:0", "finetune:nih:10:0"]
    assert (tmp_path / "linear:rsna:10:0.from").read_text() == "linear:rsna:1:0"
    assert not (tmp_path / "finetune:nih:10:0.from").exists()
    err = capfd.readouterr().err
    assert "run finetune:nih:1:0 failed" in err and "RuntimeError: boom" in err
    assert "finetune:nih:10:0 not written: the run it repeats (finetune:nih:1:0) failed" in err
    done = ("linear:rsna:1:0", "linear:rsna:100:0", "linear:covidx:100:0")
    pids = {(tmp_path / f"{s}.pid").read_text() for s in done}
    assert (str(os.getpid()) in pids) == (processes == 1)  # with workers, nothing runs in this process
