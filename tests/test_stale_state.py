"""State is keyed by what produced it (issue 12.1): a changed input never resumes or reads stale state.

Each test changes one class of input - a training parameter, the data's pixels, the encoder - of a stage whose state
or cache already exists, and checks that the result changes and equals a fresh run (a run in empty directories).
The stores are tiny prepared stores written here in the layout ``cxrbench.data.store`` reads.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.evaluate import run_evaluation
from cxrbench.pretrain import run_pretrain

WORDS = ["no", "acute", "effusion", "left", "right", "pneumonia", "edema", "stable", "small", "lobe"]
TEXT = {"name_or_path": "wordpiece-bert", "max_length": 16, "freeze_layers": 0, "vocab_size": 120,
        "hidden_size": 16, "num_layers": 1, "num_heads": 2}
CONVIRT = {"variant": "paper", "backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32, "depth": 1},
           "image_size": 32, "text": TEXT, "embed_dim": 16, "heads": 4}
PRE_ENGINE = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 1,
              "ckpt_every": 2, "progress": False, "device": "cpu", "precision": "fp32"}
LINEAR = {"datasets": ["chexpert"], "crop_ratio": 1.0, "image_size": 32,
          "engine": {"epochs": 6, "batch_size": 4, "lr": 0.05, "ckpt_every": 2, "patience": None, "progress": False,
                     "device": "cpu", "precision": "fp32", "drop_last": False}}


def write_store(root: Path, name: str, *, n: int = 24, seed: int = 0, texts: bool = False) -> Path:
    """A prepared store of ``n`` 32 x 32 images: label k of row i is 1 when half k of the image is bright; with
    ``texts`` (a pretraining corpus) every row is a training row with a report."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
    for start in range(0, n - 3, 8):  # every split sees every label combination
        y[start:start + 4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
    img = rng.integers(0, 60, size=(n, 32, 32)).astype(np.uint8)
    img[:, :16] += (y[:, :1] * 150).astype(np.uint8)[:, :, None]
    img[:, 16:] += (y[:, 1:] * 150).astype(np.uint8)[:, :, None]
    split = np.array((["train"] * 2 + ["valid", "test"]) * (n // 4))
    split[:4], split[8:12], split[16:20] = "train", "valid", "test"
    if texts:
        split[:] = "train"
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", img)
    df = pd.DataFrame({"row": np.arange(n), "image_id": [f"img{i}" for i in range(n)], "split": split,
                       "A": y[:, 0], "B": y[:, 1], "frac_100": True})
    if texts:
        df["text"] = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 5)) for i in range(n)]
    df.to_parquet(root / "manifest.parquet")
    meta = {"dataset": name, "size": 32, "label_names": ["A", "B"], "label_kind": "multilabel", "n_images": n}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def repaint(root: Path) -> None:
    """New pixels, same labels, metadata and manifest (what a re-prepare with another resize would give)."""
    img = np.load(root / "images.npy")
    np.save(root / "images.npy", (255 - img).astype(np.uint8))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in obj["state_dict"].items() if torch.is_tensor(v)}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(Exception):
    """Stands for SIGKILL: raised right after an optimiser step, before the engine saves anything for it."""


@pytest.fixture
def kill_after(monkeypatch):
    """``kill_after(n)``: the next fit stops after optimiser step n (its last.ckpt is the previous save)."""
    from cxrbench.engine import loop

    original = loop._Trainer._step

    def arm(n: int) -> None:
        def step(self, micro):
            original(self, micro)
            if self.s["step"] == n:
                monkeypatch.setattr(loop._Trainer, "_step", original)
                raise Killed(f"killed after step {n}")

        monkeypatch.setattr(loop._Trainer, "_step", step)

    return arm


def pretrain(tmp, data, out, work, **engine):
    engine = {**PRE_ENGINE, **engine}
    return run_pretrain("convirt", dict(CONVIRT), engine, data, tmp / out, seed=1, work_dir=tmp / work)


def test_changed_training_parameters_retrain_and_equal_a_fresh_run(tmp_path):
    data = write_store(tmp_path / "mimic", "mimic", n=16, texts=True)
    first = pretrain(tmp_path, data, "a", "work")
    changed = pretrain(tmp_path, data, "b", "work", lr=5e-3, epochs=3)  # same work dir: its state is stale
    fresh = pretrain(tmp_path, data, "c", "fresh_work", lr=5e-3, epochs=3)
    assert first["steps"] == 8 and changed["steps"] == fresh["steps"] == 12
    for name in ("encoder.pt", "model.pt"):
        a, b, c = (tensors(tmp_path / d / name) for d in "abc")
        assert not same_tensors(a, b)
        assert same_tensors(b, c)
    assert (tmp_path / "b" / "curves.csv").read_text() == (tmp_path / "c" / "curves.csv").read_text()


@pytest.fixture
def encoders(tmp_path):
    """Two exported random-init encoders (seeds 0 and 1): checkpoint directories for the evaluate stage."""
    out = {}
    for seed in (0, 1):
        out[seed] = tmp_path / f"random{seed}"
        params = {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32, "depth": 1}, "image_size": 32}
        run_pretrain("random", params, {}, tmp_path, out[seed], seed=seed)
    return out


def evaluate(tmp, ckpt, data, out, cache, **engine):
    params = {**LINEAR, "engine": {**LINEAR["engine"], **engine}}
    return run_evaluation(ckpt_dir=ckpt, task="linear", dataset_dir=data, dataset="chexpert", fraction=100, seed=0,
                          task_params=params, out_dir=tmp / out, cache_dir=tmp / cache)


def result(tmp, out):
    metrics = json.loads((tmp / out / "metrics.json").read_text())["metrics"]
    return metrics, (tmp / out / "curves.csv").read_text()


def test_changed_pixels_recompute_the_features(tmp_path, encoders):
    data = write_store(tmp_path / "chexpert", "chexpert")
    evaluate(tmp_path, encoders[0], data, "before", "features")
    repaint(data)
    evaluate(tmp_path, encoders[0], data, "after", "features")  # the cache holds the old pixels' features
    evaluate(tmp_path, encoders[0], data, "fresh", "fresh_features")
    assert result(tmp_path, "after") == result(tmp_path, "fresh")
    assert result(tmp_path, "after") != result(tmp_path, "before")
    old, new = (sorted(p.name for p in (tmp_path / d).glob("*.pt")) for d in ("features", "fresh_features"))
    assert old == new  # the stale entries were replaced, not kept beside the new ones


def test_killed_evaluate_rerun_with_new_lr_starts_fresh(tmp_path, encoders, kill_after):
    data = write_store(tmp_path / "chexpert", "chexpert")
    kill_after(7)
    with pytest.raises(Killed):
        evaluate(tmp_path, encoders[0], data, "run", "features")
    assert (tmp_path / "run" / "train" / "last.ckpt").is_file()
    evaluate(tmp_path, encoders[0], data, "run", "features", lr=0.2)
    evaluate(tmp_path, encoders[0], data, "fresh", "features", lr=0.2)
    assert result(tmp_path, "run") == result(tmp_path, "fresh")
    rows = list(csv.DictReader(io.StringIO(result(tmp_path, "run")[1])))
    assert {float(r["lr"]) for r in rows if r.get("lr")} == {0.2}  # no step of the old lr in the curves


def test_killed_evaluate_rerun_with_another_encoder_starts_fresh(tmp_path, encoders, kill_after):
    data = write_store(tmp_path / "chexpert", "chexpert")
    kill_after(7)
    with pytest.raises(Killed):
        evaluate(tmp_path, encoders[0], data, "run", "features")
    evaluate(tmp_path, encoders[1], data, "run", "features")
    evaluate(tmp_path, encoders[1], data, "fresh", "fresh_features")
    assert result(tmp_path, "run") == result(tmp_path, "fresh")


def test_killed_evaluate_rerun_on_repainted_data_starts_fresh(tmp_path, encoders, kill_after):
    data = write_store(tmp_path / "chexpert", "chexpert")
    kill_after(7)
    with pytest.raises(Killed):
        evaluate(tmp_path, encoders[0], data, "run", "features")
    repaint(data)
    evaluate(tmp_path, encoders[0], data, "run", "features")
    evaluate(tmp_path, encoders[0], data, "fresh", "fresh_features")
    assert result(tmp_path, "run") == result(tmp_path, "fresh")
