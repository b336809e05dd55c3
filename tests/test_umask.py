"""Output files get the user's umask (a shared project directory stays readable by colleagues)."""

import os
import stat

import pytest

from cxrbench.engine.state import atomic_write_bytes
from cxrbench.pretrain import run_pretrain


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_exported_checkpoint_files_follow_the_umask(tmp_path, umask):
    params = {"backbone": "resnet18", "image_size": 32}
    run_pretrain("random", params, {}, tmp_path / "unused", tmp_path / "ckpt", seed=0)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "encoder.pt", "model.pt", "params.json"]
    for name in files:  # before the fix: 0o600 whatever the umask (tempfile.mkstemp)
        assert _mode(tmp_path / "ckpt" / name) == 0o666 & ~umask, name


def test_engine_files_follow_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "last.ckpt", b"x")
    assert _mode(tmp_path / "last.ckpt") == 0o666 & ~umask
