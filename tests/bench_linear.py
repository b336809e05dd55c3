"""Benchmark: the linear probe on cached frozen features vs re-running the frozen backbone every epoch.

Run with ``pytest tests/bench_linear.py --benchmark-enable``; the speed-up is stored in the benchmark's
extra_info and must exceed 1 (both paths are measured in the same run).
"""

import time

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

EPOCHS, SIZE, N = 4, 64, 96
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
    """The uncached baseline: frozen backbone run on every batch of every epoch, linear layer on top."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.fc = nn.Linear(backbone.out_dim, 1)

    def forward(self, batch):
        with torch.no_grad():
            f = self.backbone(to_input(classification_view(batch["image"], SIZE, 1.0, None), {})).pooled
        return {"loss": classification_loss(self.fc(f), batch["label"], False)}


@pytest.mark.benchmark
def test_bench_linear_cache_speedup(benchmark, tmp_path):
    torch.manual_seed(0)
    pre = Pretrained("bench", build_backbone("resnet18"), SIZE, {"mean": 0.5, "std": 0.5})
    store = Store()
    params = {"datasets": ["rsna"], "crop_ratio": 1.0, "cache_dir": str(tmp_path / "cache"), "engine": ENGINE}
    task = TASKS.get("linear")(params)
    task.run(pre, store, 100, 0, tmp_path / "warm")  # fills the cache (one backbone pass per split)
    runs = iter(range(10**6))
    benchmark.pedantic(lambda: task.run(pre, store, 100, 0, tmp_path / f"c{next(runs)}"), rounds=3, iterations=1)
    cached = benchmark.stats.stats.mean

    t0 = time.perf_counter()
    model = OnTheFly(pre.backbone)
    fit(
        model,
        StoreDataset(store, store.rows("train"), ("image", "label")),
        engine_config(params),
        tmp_path / "otf",
        seed=0,
        collate_fn=collate,
    )
    uncached = time.perf_counter() - t0
    benchmark.extra_info.update(cached_s=cached, uncached_s=uncached, speedup=uncached / cached)
    print(
        f"linear probe {EPOCHS} epochs: cached {cached:.3f}s, backbone every epoch {uncached:.3f}s, "
        f"speed-up x{uncached / cached:.1f}"
    )
    assert uncached > cached
