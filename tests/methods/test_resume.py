"""Exact resume of pretraining methods with random augmentation: interrupted, rerun, same weights and curves.

The augmentation random numbers are a pure function of (seed, optimiser step, dataset row) (``_augment.keyed``), so
they need no state in the engine checkpoint; before this, the augmenters' own generators restarted from the seed on
resume and the resumed run drew other views than the uninterrupted one. Any generator a method still owns is in
the checkpoint too (the engine saves every ``torch.Generator`` attribute of the module).

``test_interrupted_method_resumes_bit_identically`` covers every registered method that trains, in process (an
exception raised right after an optimiser step stands for the kill); the SIGKILL test runs two of them in
subprocesses (slow).
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from cxrbench.engine.state import load_checkpoint
from cxrbench.registry import METHODS

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from cxrbench.engine import EngineConfig, fit
    from cxrbench.registry import METHODS

    TEXT = {"name_or_path": "wordpiece-bert", "max_length": 16, "freeze_layers": 0, "vocab_size": 120,
            "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    PARAMS = {
        "g2d": {"variant": "paper", "backbone": "resnet18", "image_size": 32, "text": TEXT, "embed_dim": 16,
                "heads": 4, "warmup_global_steps": 2, "decoder_channels": [8, 8, 8, 8, 8],
                "augment": {"scale": [0.5, 1.0], "degrees": 10, "perspective": 0.05, "autocontrast": 0.5,
                            "brightness": 0.2, "contrast": 0.2, "hflip": 0.5}},
        "raddino": {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32, "depth": 2},
                    "crops": {"global_size": 32, "local_size": 16, "n_local": 2}, "prototypes": 32,
                    "head_hidden": 16, "head_bottleneck": 8, "freeze_last_layer_steps": 2,
                    "warmup_teacher_temp_steps": 3, "momentum_start": 0.9},
    }
    WORDS = ["no", "acute", "effusion", "left", "right", "pneumonia", "edema", "stable", "small", "lobe"]

    class Data(torch.utils.data.Dataset):
        def __init__(self, n=24):
            g = torch.Generator().manual_seed(0)
            self.x = torch.rand(n, 1, 32, 32, generator=g)
            self.t = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 5)) for i in range(n)]
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return {"image": self.x[i], "text": self.t[i], "row": 100 + i}

    def collate(items):
        return {"image": torch.stack([b["image"] for b in items]), "text": [b["text"] for b in items],
                "row": torch.tensor([b["row"] for b in items])}

    name, out = sys.argv[1], sys.argv[2]
    data = Data()
    module = METHODS.get(name)({**PARAMS[name], "seed": 3}).build(corpus=data.t)
    hook = module.on_step_end
    def on_step_end(step, total):
        hook(step, total)
        if step == int(os.environ.get("KILL_AT", "0")):
            os.kill(os.getpid(), 9)
    module.on_step_end = on_step_end
    cfg = EngineConfig(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.04, schedule="warmup_cosine",
                       warmup_steps=2, ckpt_every=4, log_every=1, progress=False, device="cpu")
    res = fit(module, data, cfg, out, seed=5, collate_fn=collate)
    torch.save({"state": module.state_dict(), "history": res.history}, os.path.join(out, "final.pt"))
''')


def _run(tmp_path, args, kill_at=None):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KILL_AT"}
    env["OMP_NUM_THREADS"] = "1"
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["g2d", "raddino"])
def test_sigkill_then_resume_gives_bit_identical_weights(name, tmp_path):
    ref = _run(tmp_path, [name, tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr
    killed = _run(tmp_path, [name, tmp_path / "run"], kill_at=7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ck = load_checkpoint(tmp_path / "run" / "last.ckpt")
    # 6 steps per epoch, checkpoints every 4 steps and at epoch ends: the last one before step 7 is step 6
    assert ck["step"] == 6 and ck["epoch"] == 1 and ck["batch_in_epoch"] == 0 and not ck["done"]
    resumed = _run(tmp_path, [name, tmp_path / "run"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(tmp_path / d / "final.pt", weights_only=False) for d in ("ref", "run"))
    assert a["state"].keys() == b["state"].keys()
    differ = [k for k in a["state"] if torch.is_tensor(a["state"][k]) and not torch.equal(a["state"][k],
                                                                                       b["state"][k])]
    assert differ == []
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert len(a["history"]) == 12


# ------------------------------------------------------------------------------------------------ in process
class Killed(Exception):
    pass


class Pairs(torch.utils.data.Dataset):
    """16 fixed image-report pairs (32 x 32) with their dataset rows."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 32, 32, generator=g)
        self.t = [" ".join(["no", "acute", "effusion", "left", "right", "edema", "small", "lobe"][(i * k) % 8]
                           for k in range(1, 5)) for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "text": self.t[i], "row": 100 + i}


def collate(items):
    return {"image": torch.stack([b["image"] for b in items]), "text": [b["text"] for b in items],
            "row": torch.tensor([b["row"] for b in items])}


def _fit(name, params, out):
    """A pretraining as a new process runs it: the method built anew, the global RNG elsewhere."""
    from cxrbench.engine import EngineConfig, fit

    data = Pairs()
    module = METHODS.get(name)({**params, "seed": 3}).build(corpus=data.t)
    torch.manual_seed(999)
    cfg = EngineConfig(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.04, schedule="warmup_cosine", warmup_steps=2,
                       ckpt_every=3, log_every=1, progress=False, device="cpu", precision="fp32")
    res = fit(module, data, cfg, out, seed=5, collate_fn=collate)
    return module.state_dict(), res.history


def _same(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


# one-layer ViT backbones keep the checkpoints (written 4 times per fit) small
VIT = {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32, "depth": 1}}
SMALL = {"g2d": {**VIT, "decoder_channels": [8, 8, 8, 8], "warmup_global_steps": 2},  # stride 16: 4 U-Net blocks
         "raddino": {"backbone_kwargs": {"img_size": 32, "depth": 1}}}


def _training_methods(tiny):
    return [n for n in sorted(tiny) if n in METHODS.names() and METHODS.get(n)({**tiny[n], "seed": 0}).trains()]


def test_every_training_method_is_covered(tiny_params):
    from cxrbench.methods._base import Method

    untested = [n for n in METHODS.names() if n not in tiny_params and METHODS.get(n).trains is not Method.trains]
    assert _training_methods(tiny_params) == ["convirt", "g2d", "mflag", "raddino"]
    assert untested == [] or all(not METHODS.get(n)({"seed": 0}).trains() for n in untested), untested


@pytest.mark.slow  # ~20 s for the four methods: make test stays under 3 minutes; CI runs it in make test-slow
@pytest.mark.parametrize("name", ["convirt", "g2d", "mflag", "raddino"])
def test_interrupted_method_resumes_bit_identically(name, tiny_params, tmp_path, monkeypatch):
    """4 steps per epoch, checkpoints at steps 3, 4 (epoch end), 6, 8: interrupted after step 5 (resumes from the
    epoch end) and after step 7 (resumes mid-epoch)."""
    from cxrbench.engine import loop

    params = {**tiny_params[name], **SMALL.get(name, VIT)}
    ref_state, ref_history = _fit(name, params, tmp_path / "ref")
    ref_ckpt = load_checkpoint(tmp_path / "ref" / "last.ckpt")
    assert ref_ckpt["step"] == 8 and len(ref_history) == 8
    original = loop._Trainer._step
    for kill in (5, 7):
        def step(self, micro, kill=kill):
            original(self, micro)
            if self.s["step"] == kill:
                monkeypatch.setattr(loop._Trainer, "_step", original)
                raise Killed

        monkeypatch.setattr(loop._Trainer, "_step", step)
        out = tmp_path / f"run{kill}"
        with pytest.raises(Killed):
            _fit(name, params, out)
        assert load_checkpoint(out / "last.ckpt")["step"] == kill - 1
        state, history = _fit(name, params, out)
        _same(state, ref_state, f"{name} weights, killed after step {kill}")
        _same(history, ref_history, f"{name} history, killed after step {kill}")
        _same(load_checkpoint(out / "last.ckpt"), ref_ckpt, f"{name} last.ckpt, killed after step {kill}")
        assert (out / "curves.csv").read_text() == (tmp_path / "ref" / "curves.csv").read_text()
