import json
import re

import pytest
import yaml

from cxrbench import dvcsync


def test_complete_stages_needs_every_declared_output(tmp_path):
    stages = {
        "a": {"cmd": "x", "outs": [{"out/a": {"persist": True}}]},
        "b": {"cmd": "x", "outs": ["out/b1"], "metrics": [{"out/b2.json": {"cache": False}}]},
        "c": {"cmd": "x", "plots": ["out/c.csv"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "b1").write_text("1")
    (tmp_path / "out" / "c.csv").write_text("1")
    assert dvcsync.complete_stages(tmp_path) == ["a", "c"]  # b lacks its metrics file


def test_sync_outside_a_dvc_repository_does_nothing(tmp_path, capsys):
    assert dvcsync.sync(tmp_path) == 0
    assert "not a DVC repository" in capsys.readouterr().err


def test_every_dvc_stage_has_a_phase_rule(root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(dvcsync.PHASE_RULES)


def test_every_method_curve_goes_through_dvclive_without_zeros(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "convirt").mkdir(parents=True)
    (ckpts / "g2d").mkdir()
    (ckpts / "random").mkdir()  # no curves: not trained
    (ckpts / "convirt" / "curves.csv").write_text("step,epoch,lr,loss,grad_norm\n10,0,0.1,3.5,1.0\n20,1,0.1,3.25,0.5\n")
    # a validation row (no loss) and a row without grad_norm: neither may become a 0 in a curve
    (ckpts / "g2d" / "curves.csv").write_text(
        "step,epoch,lr,loss,loss_dense,val_auroc\n10,0,0.1,4.5,,\n10,0,,,,0.7\n20,1,0.1,4.0,0.5,\n")
    assert dvcsync.export_dvclive(ckpts, tmp_path / "live") == ["convirt", "g2d"]
    metrics = tmp_path / "live" / "plots" / "metrics"
    assert (metrics / "convirt" / "loss.tsv").read_text().split() == ["step", "loss", "10", "3.5", "20", "3.25"]
    assert (metrics / "g2d" / "loss.tsv").read_text().split() == ["step", "loss", "10", "4.5", "20", "4.0"]
    assert (metrics / "g2d" / "loss_dense.tsv").read_text().split() == ["step", "loss_dense", "20", "0.5"]
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["convirt"]["loss"] == 3.25 and summary["g2d"]["loss"] == 4.0


def test_offline_plots_page_has_no_script_and_draws_each_revision():
    spec = {"data": {"values": [{"step": "10", "loss": "3.5", "rev": "workspace"},
                                {"step": "20", "loss": "3.2", "rev": "workspace"},
                                {"step": "10", "loss": "3.9", "rev": "HEAD"}]},
            "encoding": {"x": {"field": "step"}},
            "layer": [{"layer": [{"mark": "line"}], "encoding": {"y": {"field": "loss"}}}]}
    shown = {"data": {"live/plots/metrics/convirt/loss.tsv": [{"type": "vega", "content": spec}],
                      "results/report/figure.png": [{"type": "image", "url": "dvc_plots/figure.png"}]}}
    page = dvcsync.plots_page(shown)
    assert "<script" not in page and not re.search(r"(src|href)=['\"]https?:", page)  # nothing to fetch
    assert page.count("<svg") == 1 and "<img src='dvc_plots/figure.png'" in page
    assert "workspace" in page and "HEAD" in page  # one line per revision, labelled in the legend
    assert dvcsync._encoding(spec) == {"x": "step", "y": "loss"}


def test_whole_dag_built_only_for_the_default_target_without_restrictions():
    assert dvcsync.whole_dag_built(frozenset(), frozenset(), frozenset(), frozenset(), frozenset())
    assert dvcsync.whole_dag_built({"all"}, set(), default="all")
    assert not dvcsync.whole_dag_built({"pretrain_all"}, set(), default="all")  # one phase: the dry run decides
    assert not dvcsync.whole_dag_built({"all", "results/x"}, set(), default="all")
    assert not dvcsync.whole_dag_built(set(), {"pretrain:method=g2d"}, default="all")  # --target-jobs
    assert not dvcsync.whole_dag_built(set(), set(), {"pretrain"}, default="all")  # --until / --omit-from
    assert not dvcsync.whole_dag_built(set(), set(), set(), set(), {"prepare"}, default="all")  # --allowed-rules
    assert not dvcsync.whole_dag_built({"all"}, set(), default=None)


def test_sync_after_the_whole_dag_commits_every_complete_stage_without_a_dry_run(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    stages = {"pretrain": {"cmd": "x", "outs": ["ck"]}, "report": {"cmd": "x", "outs": ["rep"]},
              "audit": {"cmd": "x", "outs": ["missing"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "ck").mkdir()
    (tmp_path / "rep").mkdir()
    calls = []
    monkeypatch.setattr(dvcsync, "snakemake_up_to_date", lambda root, rule: calls.append(rule) or False)
    done = type("Done", (), {"returncode": 0})
    monkeypatch.setattr(dvcsync.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or done)
    monkeypatch.delenv("CXRBENCH_UNDER_DVC", raising=False)
    assert dvcsync.sync(tmp_path, all_built=True) == 0
    assert calls == [["dvc", "commit", "--quiet", "--force", "pretrain", "report"]]  # no dry run; audit incomplete
    calls.clear()
    assert dvcsync.sync(tmp_path) == 0  # without it: asked, and Snakemake (here) says nothing is up to date
    assert calls == ["all", "pretrain_all"]
    calls.clear()
    (tmp_path / "missing").mkdir()  # every stage complete: dvc.yaml named once instead of each stage
    assert dvcsync.sync(tmp_path, all_built=True) == 0
    assert calls == [["dvc", "commit", "--quiet", "--force", "dvc.yaml"]]


def test_overridden_keys_names_every_changed_leaf():
    params = {"precision": "auto", "evaluate": {"engine": {"lr": 0.1, "epochs": 3}}, "seed": 0}
    assert dvcsync.overridden_keys(params, params) == []
    config = {"precision": "fp32", "evaluate": {"engine": {"lr": 0.1, "epochs": 5}}, "seed": 0, "extra": 1}
    assert dvcsync.overridden_keys(config, params) == ["evaluate.engine.epochs", "extra", "precision"]


def test_sync_args_from_the_snakemake_workflow(tmp_path):
    (tmp_path / "params.yaml").write_text("precision: auto\nmatrix: {seeds: [0, 1]}\n")
    settings = dict(targets=frozenset(), target_jobs=frozenset(), until=frozenset(), omit_from=frozenset(),
                    allowed_rules=frozenset())
    wf = type("Wf", (), {"dag_settings": type("DS", (), settings), "default_target": "all"})
    same = {"precision": "auto", "matrix": {"seeds": [0, 1]}}
    assert dvcsync.sync_args(wf, same, tmp_path / "params.yaml") == ["--all-built"]
    over = {"precision": "fp32", "matrix": {"seeds": [0]}}
    assert dvcsync.sync_args(wf, over, tmp_path / "params.yaml") == ["--all-built", "--overridden", "matrix.seeds",
                                                                      "precision"]
    old = type("OldWf", (), {})  # no dag_settings (Snakemake < 8): the dry run decides
    assert dvcsync.sync_args(old, same, tmp_path / "params.yaml") == []


def test_sync_commits_nothing_after_an_override(tmp_path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pretrain": {"cmd": "x", "outs": ["ck"]}}}))
    (tmp_path / "ck").mkdir()
    monkeypatch.delenv("CXRBENCH_UNDER_DVC", raising=False)
    monkeypatch.setattr(dvcsync.subprocess, "run", lambda *a, **k: pytest.fail("dvc commit after an override"))
    assert dvcsync.sync(tmp_path, all_built=True, overridden=["precision"]) == 0
    assert "overrode params.yaml (precision)" in capsys.readouterr().err
