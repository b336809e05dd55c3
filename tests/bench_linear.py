"""Benchmark: the linear probe on cached frozen features vs re-running the frozen backbone on every batch.

Run with ``pytest tests/bench_linear.py --benchmark-enable``. The benchmark table times one ``LinearProbe.run`` whose
features come from the on-disk cache (a fresh task per round, so nothing is kept in memory between runs). The
uncached baseline does the same work with the backbone in the loop: ``EPOCHS`` epochs of training, a validation pass
per epoch, one test pass. It runs in each round's untimed setup (same machine load). ``extra_info`` holds both
best-of-rounds times and ``speedup`` = t_uncached / t_cached, which must exceed ``MIN_SPEEDUP``.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.engine import fit
from cxrbench.methods._base import Pretrained
from cxrbench.models.backbones import build_backbone
from cxrbench.registry import TASKS
from cxrbench.tasks._common import StoreDataset, classification_view, collate, engine_config, to_input
from cxrbench.tasks.linear import classification_loss

EPOCHS, SIZE, N, ROUNDS, MIN_SPEEDUP = 4, 64, 96, 3, 2.0
ENGINE = {"epochs": EPOCHS, "batch_size": 16, "lr": 1e-3, "progress": False}


class Store:
    name, label_names, label_kind, size, masks = "rsna", ["Pneumonia"], "multilabel", SIZE, None
    meta = {"bench": True}

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, size=(N, SIZE, SIZE)).astype(np.uint8)
        self.y = rng.integers(0, 2, size=(N, 1)).astype(np.float32)
        self.split = np.array(["train", "train", "valid", "test"] * (N // 4))

    def rows(self, split, fraction=100):
        return np.flatnonzero(self.split == split)

    def labels(self, rows):
        return self.y[rows]


class OnTheFly(nn.Module):
    """The uncached baseline: frozen backbone (a copy, kept in eval mode) run on every batch, linear layer on top.
    batch -> {"loss"}."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.fc = nn.Linear(backbone.out_dim, 1)

    def train(self, mode: bool = True) -> "OnTheFly":
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics must not move
        return self

    def forward(self, batch):
        with torch.no_grad():
            f = self.backbone(to_input(classification_view(batch["image"], SIZE, 1.0, None), {})).pooled
        return {"loss": classification_loss(self.fc(f), batch["label"], False)}

    def split_loss(self, store: Store, split: str) -> float:
        """Mean loss over a whole split, backbone included (the validation / test pass without a cache)."""
        rows = store.rows(split)
        batch = {"image": torch.from_numpy(store.images[rows].astype(np.float32) / 255)[:, None],
                 "label": torch.from_numpy(store.labels(rows))}
        with torch.no_grad():
            return float(self(batch)["loss"])


def _uncached_run(pre: Pretrained, store: Store, params: dict, out_dir) -> float:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OnTheFly(pre.backbone)
    cfg = engine_config(params, monitor="val_loss", mode="min")
    train = StoreDataset(store, store.rows("train"), ("image", "label"))
    fit(model, train, cfg, out_dir, seed=0, collate_fn=collate,
        val_fn=lambda m: {"val_loss": m.split_loss(store, "valid")})
    return model.split_loss(store, "test")


@pytest.mark.benchmark
def test_bench_linear_cache_speedup(timed, benchmark, tmp_path):
    torch.manual_seed(0)
    pre = Pretrained("bench", build_backbone("resnet18"), SIZE, {"mean": 0.5, "std": 0.5})
    store = Store()
    params = {"datasets": ["rsna"], "crop_ratio": 1.0, "cache_dir": str(tmp_path / "cache"), "engine": ENGINE}
    warm = TASKS.get("linear")(params)
    warm.run(pre, store, 100, 0, tmp_path / "warm")  # fills the on-disk cache (one backbone pass per split)
    assert warm.cache.misses == 3
    runs = iter(range(10**6))
    t_cached, t_uncached, tasks = [], [], []

    def cached():
        tasks.append(TASKS.get("linear")(params))
        return tasks[-1].run(pre, store, 100, 0, tmp_path / f"c{next(runs)}")

    def uncached():
        _uncached_run(pre, store, params, tmp_path / f"u{next(runs)}")

    metrics = benchmark.pedantic(timed(cached, t_cached), setup=timed(uncached, t_uncached), rounds=ROUNDS,
                                 warmup_rounds=1, iterations=1)
    c, u = min(t_cached[1:] or t_cached), min(t_uncached[1:] or t_uncached)
    benchmark.extra_info.update(epochs=EPOCHS, image_size=SIZE, n_train=len(store.rows("train")),
                                threads=torch.get_num_threads(), cached_ms=round(1e3 * c, 1),
                                uncached_ms=round(1e3 * u, 1), speedup=round(u / c, 2))
    assert all(t.cache.misses == 0 and t.cache.hits == 3 for t in tasks)  # every timed run read the cache
    assert "AUROC" in str(metrics) or metrics  # the probe produced its metrics
    assert u / c > MIN_SPEEDUP, f"feature cache speed-up x{u / c:.2f} <= x{MIN_SPEEDUP}"
