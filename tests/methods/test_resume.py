"""Exact resume of pretraining methods with random augmentation: SIGKILL after a checkpoint, rerun, same weights.

The augmentation random numbers are a pure function of (seed, optimiser step, dataset row) (``_augment.keyed``), so
they need no state in the engine checkpoint; before this, the augmenters' own generators restarted from the seed on
resume and the resumed run drew other views than the uninterrupted one.
"""

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
