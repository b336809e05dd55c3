import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.models._base import Backbone, BackboneOutput
from cxrbench.registry import TASKS
from cxrbench.tasks._common import FeatureCache, cached_features, encoder_fingerprint, select_rows


class HalfMeans(Backbone):
    """pooled = (mean of the top half, mean of the bottom half) of channel 0; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.out_dim, self.pyramid_channels, self.pyramid_strides = 2, [1], [1]
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = x.shape[-2] // 2
        pooled = torch.stack([x[:, 0, :h].mean((1, 2)), x[:, 0, h:].mean((1, 2))], 1) + self.dummy
        return BackboneOutput(pooled=pooled, pyramid=[x[:, :1]])


def halves_store(make_store, n=60, size=32, seed=0, multiclass=False):
    """Label k = 1 when half k (top / bottom) is bright: linearly separable in HalfMeans features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
    y[:4] = [[0, 0], [1, 1], [0, 1], [1, 0]]
    img = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    img[:, : size // 2] += (y[:, 0] * 150).astype(np.uint8)[:, None, None]
    img[:, size // 2 :] += (y[:, 1] * 150).astype(np.uint8)[:, None, None]
    splits = np.array(["train", "valid", "test"])[np.arange(n) % 3]
    fractions = {10: np.flatnonzero(splits == "train")[:8]}
    if multiclass:  # 3 classes: none / top only / bottom only-or-both
        cls = np.where(y[:, 0] == 0, np.where(y[:, 1] == 0, 0, 2), np.where(y[:, 1] == 0, 1, 2))
        y = np.eye(3, dtype=np.float32)[cls]
        return make_store(
            "covidx", img, y, splits, label_names=["n", "p", "c"], label_kind="multiclass", fractions=fractions
        )
    return make_store("chexpert", img, y, splits, label_names=["Top", "Bottom"], fractions=fractions)


def params(tmp_path, **over):
    p = {
        "datasets": ["chexpert"],
        "cache_dir": str(tmp_path / "features"),
        "image_size": 32,
        "crop_ratio": 1.0,
        "engine": {"epochs": 15, "batch_size": 8, "lr": 0.1, "weight_decay": 0.0},
    }
    p.update(over)
    return p


def test_feature_cache_hit_is_identical_and_skips_backbone(make_store, pretrained_factory, tmp_path):
    store = halves_store(make_store)
    bb = HalfMeans()
    kw = dict(size=32, crop_ratio=1.0, normalize={"mean": 0.5, "std": 0.5}, batch_size=16)
    first = cached_features(FeatureCache(tmp_path), bb, store, "train", **kw)
    calls = bb.calls
    assert calls == 2  # 20 train rows in batches of 16
    again = cached_features(FeatureCache(tmp_path), bb, store, "train", **kw)  # fresh object: read from disk
    assert bb.calls == calls
    assert torch.equal(first["features"], again["features"])
    assert list(tmp_path.glob("*.tmp")) == []
    rows = store.rows("train", 10)
    expected = bb(((torch.from_numpy(store.images[rows]).float() / 255)[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5)
    torch.testing.assert_close(select_rows(again, rows), expected.pooled, rtol=1e-5, atol=1e-6)
    # another encoder (changed weights) is another key
    bb.dummy.data += 1
    assert encoder_fingerprint(bb) != first["key"]["encoder"]
    cached_features(FeatureCache(tmp_path), bb, store, "train", **kw)
    assert bb.calls == calls + 3


def test_linear_probe_separable_reaches_auroc_one(make_store, pretrained_factory, tmp_path):
    store = halves_store(make_store)
    pre = pretrained_factory(HalfMeans())
    task = TASKS.get("linear")(params(tmp_path))
    m = task.run(pre, store, 100, 0, tmp_path / "run")
    assert m["AUROC"] == 1.0 and m["AUROC/Top"] == 1.0 and m["AUROC/Bottom"] == 1.0
    assert task.n == {"train": 20, "valid": 20, "test": 20}
    calls = pre.backbone.calls
    m10 = task.run(pre, store, 10, 1, tmp_path / "run10")  # other fraction + seed: features reused, no backbone
    assert pre.backbone.calls == calls and task.n["train"] == 8
    assert task.cache.hits >= 3 and 0 <= m10["AUROC"] <= 1


def test_linear_probe_multiclass_accuracy(make_store, pretrained_factory, tmp_path):
    store = halves_store(make_store, multiclass=True, n=90)
    task = TASKS.get("linear")(params(tmp_path, engine={"epochs": 40, "batch_size": 8, "lr": 0.2}))
    m = task.run(pretrained_factory(HalfMeans()), store, 100, 0, tmp_path / "run")
    assert m["ACC"] == pytest.approx(1.0) and m["AUROC"] == 1.0


def test_linear_probe_is_deterministic_per_seed(make_store, pretrained_factory, tmp_path):
    store = halves_store(make_store)
    runs = [
        TASKS.get("linear")(params(tmp_path, engine={"epochs": 1, "batch_size": 4, "lr": 0.01})).run(
            pretrained_factory(HalfMeans()), store, 100, s, tmp_path / f"r{i}"
        )
        for i, s in enumerate([3, 3])
    ]
    assert runs[0] == runs[1]
