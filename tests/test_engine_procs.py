"""The engine across processes: exact resume after SIGKILL, and data parallel under torchrun (gloo, CPU)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from cxrbench.engine.state import load_checkpoint

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from torch import nn
    from cxrbench.engine import EngineConfig, fit

    class Data(torch.utils.data.Dataset):
        def __init__(self, n=48):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 8, generator=g)
            self.y = torch.sin(self.x.sum(1))
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return {"x": self.x[i], "y": self.y[i]}

    class Net(nn.Module):
        def __init__(self, dropout):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))
        def forward(self, b):
            mse = ((self.net(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()
            return {"loss": mse, "mse": mse}
        def on_step_end(self, step, total):
            if step == int(os.environ.get("KILL_AT", "0")):
                os.kill(os.getpid(), 9)

    out, batch, dropout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    model = Net(dropout)
    cfg = EngineConfig(epochs=3, batch_size=batch, lr=0.05, schedule="warmup_cosine", warmup_steps=2,
                       ckpt_every=4, log_every=2, progress=False, device="cpu")
    res = fit(model, Data(), cfg, out, seed=7)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"state": model.state_dict(), "history": res.history}, os.path.join(out, f"final{rank}.pt"))
''')


def _run(tmp_path, args, env_extra=None, torchrun=False):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KILL_AT"}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = (launcher if torchrun else [sys.executable]) + [str(script), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # a subprocess killed and resumed: ~10 s; CI runs it in make test-slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = _run(tmp_path, [tmp_path / "ref", 8, 0.2])
    assert ref.returncode == 0, ref.stderr
    killed = _run(tmp_path, [tmp_path / "run", 8, 0.2], {"KILL_AT": "11"})
    assert killed.returncode == -signal.SIGKILL
    ck = load_checkpoint(tmp_path / "run" / "last.ckpt")
    # 6 steps per epoch, checkpoints every 4 steps and at epoch ends: the last before step 11 is step 8
    assert ck["step"] == 8 and ck["epoch"] == 1 and ck["batch_in_epoch"] == 2 and not ck["done"]
    resumed = _run(tmp_path, [tmp_path / "run", 8, 0.2])
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(tmp_path / d / "final0.pt", weights_only=True) for d in ("ref", "run"))
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["history"] == b["history"] and len(a["history"]) == 9  # 18 steps, logged every 2
    assert a["history"][-1]["loss"] < a["history"][0]["loss"]


@pytest.mark.slow  # two torchrun processes: ~12 s; CI runs it in make test-slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    single = _run(tmp_path, [tmp_path / "one", 8, 0.0])
    assert single.returncode == 0, single.stderr
    ddp = _run(tmp_path, [tmp_path / "two", 4, 0.0], torchrun=True)
    assert ddp.returncode == 0, ddp.stderr
    one = torch.load(tmp_path / "one" / "final0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / "two" / f"final{r}.pt", weights_only=True) for r in (0, 1))
    for k in one["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])  # DDP keeps the replicas identical
        assert torch.allclose(r0["state"][k], one["state"][k], atol=1e-5)  # same global batch of 8
    assert [h["step"] for h in r0["history"]] == [h["step"] for h in one["history"]]
    for h0, h1 in zip(r0["history"], one["history"], strict=True):  # losses averaged over ranks
        assert h0["loss"] == pytest.approx(h1["loss"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["curves.csv", "final0.pt", "final1.pt",
                                                                     "last.ckpt"]
