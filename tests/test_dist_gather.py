"""Negatives gathered across processes (gloo, CPU, 2 processes under torchrun) equal one process's global batch.

A tiny two-tower contrastive model trains through the engine: single process with a batch of 8, and two processes
with 4 each. With ``gather_with_grad`` the first step's loss equals a plain-numpy symmetric InfoNCE over the whole
global batch (and the single-process loss), and the weights after training equal the single-process weights (the
gradient is exact, not 1/N of it). Without the gather each process sees only its 4 negatives and the loss differs.
A two-process run killed mid-training resumes to the same weights as an uninterrupted one.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cxrbench.engine.data import epoch_permutation

pytestmark = pytest.mark.slow  # each torchrun start costs a few seconds

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from torch import nn
    from cxrbench.engine import EngineConfig, fit
    from cxrbench.engine.dist import gather_with_grad
    from cxrbench.losses import symmetric_infonce

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n=32):
            g = torch.Generator().manual_seed(0)
            self.x, self.t = torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return {"x": self.x[i], "t": self.t[i]}

    class Towers(nn.Module):
        def __init__(self, gather):
            super().__init__()
            self.img, self.txt, self.gather = nn.Linear(6, 4), nn.Linear(5, 4), gather
        def forward(self, b):
            v, w = self.img(b["x"]), self.txt(b["t"])
            if self.gather:
                v, w = gather_with_grad(v), gather_with_grad(w)
            return {"loss": symmetric_infonce(v, w, temperature=0.5)}
        def on_step_end(self, step, total):
            if step == int(os.environ.get("KILL_AT", "0")) and os.environ.get("RANK") == "1":
                os.kill(os.getpid(), 9)  # rank 1 dies; torchrun then stops rank 0, as a scheduler's cancel would

    out, batch, gather = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    torch.manual_seed(0)
    model = Towers(gather)
    if os.environ.get("RANK", "0") == "0":
        torch.save(model.state_dict(), out + ".init.pt")
    cfg = EngineConfig(epochs=2, batch_size=batch, lr=0.05, ckpt_every=2, log_every=1, progress=False,
                       device="cpu", find_unused_parameters=False)
    res = fit(model, Pairs(), cfg, out, seed=3)
    if os.environ.get("RANK", "0") == "0":
        torch.save({"state": model.state_dict(), "history": res.history}, os.path.join(out, "final.pt"))
''')


def _run(tmp_path, name, batch, gather, procs, kill_at=None):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("KILL_AT", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", **({"KILL_AT": str(kill_at)} if kill_at else {}))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = (launch if procs > 1 else [sys.executable]) + [str(script), str(tmp_path / name), str(batch),
                                                         "1" if gather else "0"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _numpy_infonce(v, w, tau):
    """(CE image->text + CE text->image) / 2 over the rows of v, w (N, D), by hand."""
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    s = v @ w.T / tau

    def ce(m):
        m = m - m.max(axis=1, keepdims=True)
        return -np.mean(np.diag(m) - np.log(np.exp(m).sum(axis=1)))

    return (ce(s) + ce(s.T)) / 2


def _first_global_batch_loss(init, n=32, batch=8):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(n, 6, generator=g).numpy(), torch.randn(n, 5, generator=g).numpy()
    rows = epoch_permutation(n, 3, 0)[:batch]  # the sampler's first global batch (seed 3, epoch 0)
    v = x[rows] @ init["img.weight"].numpy().T + init["img.bias"].numpy()
    w = t[rows] @ init["txt.weight"].numpy().T + init["txt.bias"].numpy()
    return _numpy_infonce(v, w, 0.5)


def test_gathered_negatives_match_one_process_with_the_global_batch(tmp_path):
    runs = {"one": (8, True, 1), "two": (4, True, 2), "local": (4, False, 2)}
    for name, (batch, gather, procs) in runs.items():
        done = _run(tmp_path, name, batch, gather, procs)
        assert done.returncode == 0, done.stderr[-3000:]
    res = {name: torch.load(tmp_path / name / "final.pt", weights_only=True) for name in runs}
    init = torch.load(tmp_path / "one.init.pt", weights_only=True)
    expected = _first_global_batch_loss(init)
    assert res["one"]["history"][0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert res["two"]["history"][0]["loss"] == pytest.approx(expected, rel=1e-5)
    # per-process negatives: each rank's loss over its own 4 pairs, a different (smaller) problem
    assert abs(res["local"]["history"][0]["loss"] - expected) > 1e-3
    for k, v in res["one"]["state"].items():  # 8 optimiser steps later, still one process's weights
        assert torch.allclose(res["two"]["state"][k], v, atol=1e-5), k
        assert not torch.allclose(res["local"]["state"][k], v, atol=1e-4), k


def test_two_processes_killed_mid_training_resume_to_the_same_weights(tmp_path):
    ref = _run(tmp_path, "ref", 4, True, 2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _run(tmp_path, "run", 4, True, 2, kill_at=5)
    assert killed.returncode != 0
    assert (tmp_path / "run" / "last.ckpt").is_file() and not (tmp_path / "run" / "final.pt").exists()
    resumed = _run(tmp_path, "run", 4, True, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (torch.load(tmp_path / d / "final.pt", weights_only=True) for d in ("ref", "run"))
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["history"] == b["history"]
