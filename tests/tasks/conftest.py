"""Stand-ins for the task tests: a tiny in-memory prepared store, small backbones and a vision-language tower,
and (only while ``cxrbench.engine`` does not exist yet) a minimal engine with the same ``fit`` contract."""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.methods._base import Pretrained
from cxrbench.models._base import Backbone, BackboneOutput


# ------------------------------------------------------------------------------------------ engine stand-in
def _install_engine_standin() -> None:
    try:
        if hasattr(importlib.import_module("cxrbench.engine"), "fit"):
            return
    except ModuleNotFoundError:
        pass

    @dataclass
    class EngineConfig:
        epochs: int = 2
        batch_size: int = 8
        lr: float = 1e-3
        weight_decay: float = 0.0
        patience: int | None = None
        monitor: str = "val_loss"
        mode: str = "min"
        drop_last: bool = False
        extra: dict = field(default_factory=dict)

    @dataclass
    class FitResult:
        history: list
        steps: int
        best_metric: float | None
        best_path: Path | None

    def fit(module, train_set, cfg, out_dir, *, seed, collate_fn=None, val_fn=None, resume=True):
        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=cfg.batch_size, shuffle=True, generator=gen, collate_fn=collate_fn
        )
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, history, steps = None, None, [], 0
        for _ in range(cfg.epochs):
            module.train()
            for batch in loader:
                loss = module(batch)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
            module.eval()
            m = val_fn(module) if val_fn else {}
            history.append(m)
            v = m.get(cfg.monitor)
            if v is not None and (best is None or (v < best if cfg.mode == "min" else v > best)):
                best = v
                best_state = {k: t.clone() for k, t in module.state_dict().items()}
        if best_state is not None:
            module.load_state_dict(best_state)
        return FitResult(history, steps, best, None)

    mod = types.ModuleType("cxrbench.engine")
    mod.EngineConfig, mod.FitResult, mod.fit = EngineConfig, FitResult, fit
    sys.modules["cxrbench.engine"] = mod


_install_engine_standin()


# ------------------------------------------------------------------------------------------ store stand-in
class FakeStore:
    """The PreparedDataset attributes the tasks read: images (N, S, S) uint8, masks, labels/boxes/rows/texts."""

    def __init__(
        self,
        name,
        images,
        labels,
        splits,
        *,
        label_names,
        label_kind="multilabel",
        masks=None,
        boxes=None,
        texts=None,
        fractions=None,
    ):
        self.name, self.images, self.masks = name, images, masks
        self._labels, self._splits = np.asarray(labels, dtype=np.float32), np.asarray(splits)
        self.label_names, self.label_kind = list(label_names), label_kind
        self.size = int(images.shape[-1])
        self._boxes = boxes or [np.zeros((0, 4), np.float32) for _ in range(len(images))]
        self._texts = texts or [""] * len(images)
        self._fractions = fractions or {}
        self.meta = {"dataset": name, "n": len(images)}

    def rows(self, split, fraction=100):
        rows = np.flatnonzero(self._splits == split)
        if split == "train" and fraction != 100:
            rows = np.asarray(self._fractions[fraction])
        return rows

    def labels(self, rows):
        return self._labels[np.asarray(rows)]

    def boxes(self, rows):
        return [np.asarray(self._boxes[r], np.float32).reshape(-1, 4) for r in rows]

    def texts(self, rows):
        return [self._texts[r] for r in rows]


@pytest.fixture
def make_store():
    return FakeStore


# ------------------------------------------------------------------------------------------ backbones
class TinyResNetLike(Backbone):
    """Conv pyramid with strides 2..32 (channels 4, 8, 8, 16, 16); pooled = mean of the last level. ``calls``."""

    def __init__(self) -> None:
        super().__init__()
        chans = [4, 8, 8, 16, 16]
        layers, c_in = [], 3
        for c in chans:
            layers.append(nn.Sequential(nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(layers)
        self.out_dim, self.pyramid_channels, self.pyramid_strides = 16, chans, [2, 4, 8, 16, 32]
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return BackboneOutput(pooled=feats[-1].mean((2, 3)), pyramid=feats)


class TinyViTLike(Backbone):
    """One patch grid at stride ``patch`` with ``dim`` channels, CLS = mean token."""

    def __init__(self, patch: int = 16, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.out_dim, self.pyramid_channels, self.pyramid_strides = dim, [dim], [patch]

    def forward(self, x):
        g = self.embed(x)
        return BackboneOutput(pooled=g.mean((2, 3)), pyramid=[g], tokens=g.flatten(2).transpose(1, 2))


@pytest.fixture
def pretrained_factory():
    def make(backbone: Any = None, *, method="standin", image_size=32, vl=None, full_state=None):
        torch.manual_seed(0)
        bb = backbone if backbone is not None else TinyResNetLike()
        return Pretrained(
            method=method,
            backbone=bb,
            image_size=image_size,
            normalize={"mean": 0.5, "std": 0.5},
            vl=vl,
            full_state=full_state,
        )

    return make


@pytest.fixture
def tiny_resnet():
    torch.manual_seed(0)
    return TinyResNetLike()


@pytest.fixture
def tiny_vit():
    torch.manual_seed(0)
    return TinyViTLike()
