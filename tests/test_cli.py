import subprocess
import sys

import yaml

from cxrbench.cli import main


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "cxrbench", "--help"], capture_output=True, text=True, check=True)
    for stage in ("list", "generate", "prepare", "pretrain", "evaluate", "report", "targets", "dvc-sync"):
        assert stage in out.stdout


def test_validate_reports_the_bad_key(tmp_path, root, capsys):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["image_size"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    assert main(["validate", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "key 'data.image_size'" in err and "4 is less than the minimum of 16" in err


def test_targets_print_the_matrix(root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    assert main(["targets", "--phase", "pretrain"]) == 0
    assert capsys.readouterr().out.split() == [f"data/checkpoints/{m}" for m in
                                              ("random", "convirt", "g2d", "mflag", "raddino")]


def test_use_params_merges_and_validates(tmp_path, root):
    target = tmp_path / "params.yaml"
    target.write_text((root / "params.yaml").read_text())
    assert main(["use-params", str(root / "workflow/params/ci.yaml"), "--params", str(target)]) == 0
    merged = yaml.safe_load(target.read_text())
    assert merged["matrix"]["methods"] == ["random", "convirt"]
    assert merged["data"]["datasets"]["rsna"]["raw"] == "data/synthetic/rsna"
