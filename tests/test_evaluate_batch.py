"""Several runs in one evaluate process (issue 10): same results as one run per call, a failure costs only its run."""

from __future__ import annotations

import copy
import json

import pytest

import cxrbench.evaluate as ev
from cxrbench import cli, matrix
from tests.test_evaluate import MeanBackbone, Store

PARAMS = {"datasets": ["chexpert"], "crop_ratio": 1.0,
          "engine": {"epochs": 10, "batch_size": 4, "lr": 0.1, "progress": False}}


@pytest.fixture
def patched(monkeypatch):
    from cxrbench.methods._base import Pretrained

    def fresh(path, full=True):  # a new encoder per run, as a new process would load it
        return Pretrained(method="random", backbone=MeanBackbone(), image_size=16, normalize={"mean": 0.5, "std": 0.5})

    monkeypatch.setattr(ev, "load_pretrained", fresh)
    monkeypatch.setattr(ev, "checkpoint_method", lambda path: "random")
    monkeypatch.setattr(ev, "open_dataset", lambda path: Store())


def batch(tmp_path, *runs: str) -> int:
    return cli.main(["evaluate", "--method", "rand_entry", "--ckpt", str(tmp_path / "ckpt"), "--runs", *runs,
                     "--prepared", str(tmp_path / "prepared"), "--runs-root", str(tmp_path / "runs"),
                     "--cache", str(tmp_path / "features"), "--resolved", json.dumps({"linear": PARAMS})])


def metrics(path):
    rec = json.loads(path.read_text())
    return rec["run"], rec["metrics"]


def test_a_batch_gives_what_single_runs_give(patched, tmp_path):
    assert batch(tmp_path, "linear:chexpert:100:0", "linear:chexpert:100:1") == 0
    alone = tmp_path / "alone"
    ev.run_evaluation(ckpt_dir=tmp_path / "ckpt", task="linear", dataset_dir=tmp_path, dataset="chexpert",
                      fraction=100, seed=1, task_params=copy.deepcopy(PARAMS), out_dir=alone,
                      cache_dir=tmp_path / "features2", method="rand_entry")
    in_batch = metrics(tmp_path / "runs" / "rand_entry" / "linear" / "chexpert" / "f100" / "s1" / "metrics.json")
    assert in_batch == metrics(alone / "metrics.json")
    assert in_batch[0]["method"] == "rand_entry"  # the matrix entry names the run, not the registered method
    first = metrics(tmp_path / "runs" / "rand_entry" / "linear" / "chexpert" / "f100" / "s0" / "metrics.json")
    assert (first[0]["seed"], in_batch[0]["seed"]) == (0, 1)


def test_a_failing_run_does_not_cost_the_others(patched, tmp_path, capsys):
    # the store holds chexpert: a run naming rsna fails, the chexpert run after it still runs
    assert batch(tmp_path, "linear:rsna:100:0", "linear:chexpert:100:0") == 1
    assert (tmp_path / "runs" / "rand_entry" / "linear" / "chexpert" / "f100" / "s0" / "metrics.json").is_file()
    assert "1 of 2 runs failed: linear:rsna:100:0" in capsys.readouterr().err


def test_jobs_chunk_each_methods_runs(params):
    p = copy.deepcopy(params)
    p["evaluate"]["runs_per_job"] = 7
    templates = matrix.run_templates(p)
    jobs = matrix.evaluate_jobs(p)
    assert [t for job in jobs for t in job] == templates  # every run once, in order
    assert [len(j) for j in jobs] == [7] * (len(templates) // 7) + ([len(templates) % 7] if len(templates) % 7 else [])
    n_methods = len(p["matrix"]["methods"])
    assert len(templates) * n_methods == len(matrix.runs(p))
    p["evaluate"]["runs_per_job"] = 1
    assert len(matrix.evaluate_jobs(p)) == len(templates)


@pytest.mark.parametrize("spec", ["linear:rsna:10", "linear:rsna:x:0", "linear:rsna:10:0:1"])
def test_bad_run_spec_is_an_error_naming_it(spec):
    with pytest.raises(ValueError, match=spec):
        matrix.RunTemplate.parse(spec)
    assert matrix.RunTemplate.parse("linear:rsna:10:2") == matrix.RunTemplate("linear", "rsna", 10, 2)


def test_fractions_with_the_same_rows_are_computed_once(patched, tmp_path, monkeypatch):
    """The fake store's fractions are all its train rows (as the demo's floor makes 1% and 10%): the 10% run is
    written from the 1% run, with its own run identity; a fraction whose resolved parameters differ is computed."""
    calls = []
    real = ev.run_evaluation
    monkeypatch.setattr(ev, "run_evaluation", lambda **kw: calls.append(kw["fraction"]) or real(**kw))
    params = {**PARAMS, "by_fraction": {100: {"engine": {"lr": 0.05}}}}
    code = cli.main(["evaluate", "--method", "rand_entry", "--ckpt", str(tmp_path / "ckpt"), "--runs",
                     "linear:chexpert:1:0", "linear:chexpert:10:0", "linear:chexpert:100:0", "linear:chexpert:10:1",
                     "--prepared", str(tmp_path / "prepared"), "--runs-root", str(tmp_path / "runs"),
                     "--cache", str(tmp_path / "features"), "--resolved", json.dumps({"linear": params})])
    assert code == 0 and calls == [1, 100, 10]  # f10 s0 reused; f100 (other lr) and seed 1 computed
    root = tmp_path / "runs" / "rand_entry" / "linear" / "chexpert"
    f1, f10 = (json.loads((root / f / "s0" / "metrics.json").read_text()) for f in ("f1", "f10"))
    assert f10["run"]["fraction"] == 10 and f10["metrics"] == f1["metrics"]
    assert f10["reused"]["from"] == str(root / "f1" / "s0") and "reused" not in f1
    assert json.loads((root / "f10" / "s0" / "config.json").read_text())["run"]["fraction"] == 10
    assert (root / "f10" / "s0" / "predictions.npz").is_file()
