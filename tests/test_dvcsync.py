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
