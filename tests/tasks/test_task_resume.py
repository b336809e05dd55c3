"""Exact resume of every trained task (issue 12.2): a run interrupted at several moments and rerun gives the
uninterrupted run's metrics, checkpoints (every tensor: weights, optimiser, RNG and generator states) and curves.

The interruption stands for SIGKILL: an exception raised inside the engine right after an optimiser step or an
epoch's validation, before the engine saves anything for it, so the rerun starts from whatever ``last.ckpt`` held.
The rerun builds everything anew (task, pretrained encoder, store) as a new process would; the global torch RNG is
disturbed in between. Segmentation and fine-tuning draw their augmentation from a generator owned by the task's
module: before the engine checkpointed such generators, their resumed runs drew other views.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.registry import TASKS

ENGINE = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "ckpt_every": 2, "log_every": 1, "patience": None,
          "progress": False, "device": "cpu", "precision": "fp32"}


class Killed(Exception):
    pass


def arm(monkeypatch, *, step: int | None = None, validation: int | None = None) -> None:
    """Make the next fit raise after optimiser step ``step`` (before its checkpoint) or right after the validation
    of epoch ``validation`` (0-based; best.ckpt written, the epoch's last.ckpt not)."""
    from cxrbench.engine import loop

    step_fn, val_fn = loop._Trainer._step, loop._Trainer._validate

    def disarm() -> None:
        monkeypatch.setattr(loop._Trainer, "_step", step_fn)
        monkeypatch.setattr(loop._Trainer, "_validate", val_fn)

    def killing_step(self, micro):
        step_fn(self, micro)
        if self.s["step"] == step:
            disarm()
            raise Killed(f"after step {step}")

    def killing_validate(self):
        out = val_fn(self)
        if self.s["epoch"] - 1 == validation:
            disarm()
            raise Killed(f"after validation {validation}")
        return out

    monkeypatch.setattr(loop._Trainer, "_step", killing_step)
    monkeypatch.setattr(loop._Trainer, "_validate", killing_validate)


def assert_same(a, b, where="") -> None:
    """Recursive equality; tensors bit-identical."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)


# ------------------------------------------------------------------------------------------------ the tasks
def classification_store(make_store, name):
    rng = np.random.default_rng(0)
    n = 36
    y = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
    y[:4] = y[12:16] = y[24:28] = [[0, 0], [1, 1], [0, 1], [1, 0]]
    img = rng.integers(0, 60, size=(n, 32, 32)).astype(np.uint8)
    img[:, :16] += (y[:, :1] * 150).astype(np.uint8)[:, :, None]
    img[:, 16:] += (y[:, 1:] * 150).astype(np.uint8)[:, :, None]
    splits = np.array(["train"] * 12 + ["valid"] * 12 + ["test"] * 12)
    return make_store(name, img, y, splits, label_names=["A", "B"])


def seg_store(make_store):
    rng = np.random.default_rng(0)
    n = 28
    img = rng.integers(0, 80, size=(n, 32, 32)).astype(np.uint8)
    masks = np.zeros((n, 32, 32), np.uint8)
    for r in (0, 1, 2, 3, 4, 12, 13, 20, 21, 22):
        masks[r, 8:20, 6:18] = 1
        img[r, 8:20, 6:18] = 220
    labels = masks.reshape(n, -1).max(1, keepdims=True).astype(np.float32)
    splits = np.array(["train"] * 12 + ["valid"] * 8 + ["test"] * 8)
    return make_store("siim", img, labels, splits, label_names=["Pneumothorax"], masks=masks)


def det_store(make_store):
    rng = np.random.default_rng(0)
    n = 24
    img = rng.integers(0, 60, size=(n, 32, 32)).astype(np.uint8)
    boxes = []
    for i in range(n):
        if i % 3:
            img[i, 5:20, 6:15] = 220
            boxes.append(np.array([[6, 5, 15, 20]], np.float32))
        else:
            boxes.append(np.zeros((0, 4), np.float32))
    labels = np.array([[len(b) > 0] for b in boxes], np.float32)
    splits = np.array(["train"] * 12 + ["valid"] * 6 + ["test"] * 6)
    return make_store("rsna", img, labels, splits, label_names=["Pneumonia"], boxes=boxes)


SEG = {"image_size": 32, "neck_channels": 8, "decoder_channels": [8, 8, 4, 4, 4]}
CASES = {  # task -> (dataset, params, store builder)
    "linear": ("chexpert", {"crop_ratio": 1.0, "image_size": 32}, lambda ms: classification_store(ms, "chexpert")),
    "finetune": ("nih", {"crop_ratio": 0.8, "image_size": 32}, lambda ms: classification_store(ms, "nih")),
    "segmentation": ("siim", SEG, seg_store),
    "segmentation_ed": ("siim", SEG, seg_store),
    "detection": ("rsna", {"image_size": 32, "neck_channels": 8, "head_widths": [8, 8, 8], "max_boxes": 2},
                  det_store),
}
# (step, validation) interruptions; 3 optimiser steps per epoch, checkpoints at steps 2, 3 (epoch end), 4, 6:
# mid-epoch (resumes from step 4), before the first checkpoint (starts over), between an epoch's validation (best.ckpt
# written) and its checkpoint (resumes from step 2)
MOMENTS = [(5, None), (2, None), (None, 0)]


def pretrained_for(task, pretrained_factory):
    """The tiny seeded encoder (a fresh object each time); for segmentation_ed with a pretrained U-Net decoder."""
    pre = pretrained_factory()
    if task == "segmentation_ed":
        from cxrbench.models.unet import UNetDecoder
        from cxrbench.tasks._common import FrozenEncoder, segmentation_strides

        strides = segmentation_strides(pre.backbone)
        probe = FrozenEncoder(pre.backbone, strides, SEG["neck_channels"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            decoder = UNetDecoder(probe.channels, strides, tuple(SEG["decoder_channels"]))
        pre.full_state = {"decoder": decoder.state_dict()}
    return pre


def run(task, make_store, pretrained_factory, tmp_path, out):
    """One run as a new process would do it: task, encoder and store built anew."""
    dataset, extra, build = CASES[task]
    params = {"datasets": [dataset], "cache_dir": str(tmp_path / "features"), **extra, "engine": dict(ENGINE)}
    pre = pretrained_for(task, pretrained_factory)
    torch.manual_seed(12345)  # whatever the global RNG holds, the run must not depend on it
    return TASKS.get(task)(params).run(pre, build(make_store), 100, 3, tmp_path / out)


def state(tmp_path, out):
    """(last.ckpt, best.ckpt, curves.csv) of a run."""
    train = tmp_path / out / "train"
    load = lambda name: torch.load(train / name, map_location="cpu", weights_only=True)  # noqa: E731
    return load("last.ckpt"), load("best.ckpt"), (train / "curves.csv").read_text()


@pytest.mark.slow  # ~15 s for the five tasks: make test stays under 3 minutes; CI runs it in make test-slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_interrupted_task_resumes_bit_identically(task, make_store, pretrained_factory, tmp_path, monkeypatch):
    ref = run(task, make_store, pretrained_factory, tmp_path, "ref")
    want = state(tmp_path, "ref")
    assert want[0]["step"] == 6 and want[0]["done"]
    for i, (step, validation) in enumerate(MOMENTS):
        arm(monkeypatch, step=step, validation=validation)
        with pytest.raises(Killed):
            run(task, make_store, pretrained_factory, tmp_path, f"run{i}")
        torch.rand(7)  # the global stream moves on, as in another process
        got = run(task, make_store, pretrained_factory, tmp_path, f"run{i}")
        assert_same(got, ref, f"{task} metrics, interrupted at {(step, validation)}")
        assert_same(state(tmp_path, f"run{i}"), want, f"{task} state, interrupted at {(step, validation)}")
