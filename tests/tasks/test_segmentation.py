import math

import numpy as np
import pytest
import torch

from cxrbench.models.unet import UNetDecoder
from cxrbench.registry import TASKS
from cxrbench.tasks._base import NotApplicable
from cxrbench.tasks._common import FrozenEncoder, segmentation_strides
from cxrbench.tasks.segmentation import balanced_train_rows, segmentation_loss

PARAMS = {
    "datasets": ["siim"],
    "image_size": 32,
    "neck_channels": 8,
    "decoder_channels": [16, 8, 8, 4, 4],
    "engine": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
}


def seg_store(make_store, name="siim", n=36, size=32, n_pos_train=5):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, size=(n, size, size)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    splits = np.array(["train"] * 20 + ["valid"] * 8 + ["test"] * 8)
    pos = list(range(n_pos_train)) + [20, 21, 28, 29, 30]
    for r in pos:
        masks[r, 8:20, 6:18] = 1
        img[r, 8:20, 6:18] = 220
    labels = masks.reshape(n, -1).max(1, keepdims=True).astype(np.float32)
    fractions = {10: np.arange(0, 20, 2)}
    return make_store(name, img, labels, splits, label_names=["Pneumothorax"], masks=masks, fractions=fractions)


def test_siim_balanced_train_set(make_store):
    store = seg_store(make_store)
    rows = balanced_train_rows(store, 100, seed=0)
    assert len(rows) == 10 and set(range(5)) <= set(rows.tolist())  # 5 positives + 5 of the 15 negatives
    assert np.array_equal(rows, balanced_train_rows(store, 100, seed=0))
    assert not np.array_equal(rows, balanced_train_rows(store, 100, seed=1))
    frac = balanced_train_rows(store, 10, seed=0)  # then the fraction file (even rows)
    assert np.array_equal(frac, rows[rows % 2 == 0])


def test_segmentation_loss_hand_value():
    logits = torch.tensor([[[[0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    # p = 0.5 everywhere: focal = 0.25 * log 2 per pixel; dice = (2 * 0.5 + 1) / (1 + 1 + 1) = 2 / 3
    expected = 10 * 0.25 * math.log(2) - math.log(2 / 3)
    assert segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_segmentation_runs_and_writes_examples(family, make_store, pretrained_factory, tiny_resnet, tiny_vit, tmp_path):
    store = seg_store(make_store)
    pre = pretrained_factory(tiny_resnet if family == "resnet" else tiny_vit)
    task = TASKS.get("segmentation")(PARAMS)
    before = {k: v.clone() for k, v in pre.backbone.state_dict().items()}
    m = task.run(pre, store, 100, 0, tmp_path)
    assert set(m) == {"Dice@reference", "Dice@strict", "Dice@strict_global"}
    assert 0 <= m["Dice@reference"] <= 1
    assert task.n == {"train": 10, "valid": 8, "test": 8}
    ex = np.load(tmp_path / "examples.npz")
    assert ex["prob"].shape == (4, 32, 32) and ex["mask"].shape == (4, 32, 32)
    assert all(torch.equal(before[k], v) for k, v in pre.backbone.state_dict().items())  # encoder frozen


def test_encoder_decoder_setting(make_store, pretrained_factory, tiny_resnet, tmp_path):
    params = {**PARAMS, "setting": "encoder_decoder"}
    task = TASKS.get("segmentation")(params)
    with pytest.raises(NotApplicable, match="no full model state"):
        task.check(pretrained_factory(tiny_resnet))
    strides = segmentation_strides(tiny_resnet)
    torch.manual_seed(5)
    dec = UNetDecoder(FrozenEncoder(tiny_resnet, strides).channels, strides, PARAMS["decoder_channels"])
    full = {"state_dict": {f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    pre = pretrained_factory(tiny_resnet, method="g2d", full_state=full)
    task.check(pre)
    params["engine"] = {"epochs": 1, "batch_size": 4, "lr": 1e-9}
    store = seg_store(make_store)
    task = TASKS.get("segmentation")(params)
    task.run(pre, store, 100, 0, tmp_path)
    with pytest.raises(NotApplicable, match="no pretrained U-Net decoder"):
        task.check(pretrained_factory(tiny_resnet, full_state={"state_dict": {"decoder.head.weight": torch.zeros(1)}}))


@pytest.mark.parametrize("family", ["resnet", "vit"])
@pytest.mark.parametrize("augment", [True, False])
def test_cached_pyramid_matches_streaming_and_is_reused(family, augment, make_store, pretrained_factory, tiny_resnet,
                                                       tiny_vit, tmp_path):
    """The frozen backbone's pyramid is computed once per split (valid and test; train too when not augmented) and
    the run equals one that streams every image through the encoder."""
    store = seg_store(make_store)
    pre = pretrained_factory(tiny_resnet if family == "resnet" else tiny_vit)
    params = {**PARAMS, "augment": augment, "cache_dir": str(tmp_path / "cache")}
    cached = TASKS.get("segmentation")(params)
    m_cached = cached.run(pre, store, 100, 0, tmp_path / "a")
    splits = 2 if augment else 3
    assert (cached.cache.misses, cached.cache.hits) == (splits, 0)
    assert len(list((tmp_path / "cache").glob("siim-*.pt"))) == splits
    streamed = TASKS.get("segmentation")({**params, "feature_cache": False})
    m_streamed = streamed.run(pre, store, 100, 0, tmp_path / "b")
    assert streamed.cache.misses == streamed.cache.hits == 0
    for key in m_cached:
        assert m_cached[key] == pytest.approx(m_streamed[key], abs=1e-5), key
    again = TASKS.get("segmentation")(params)
    again.run(pre, store, 10, 1, tmp_path / "c")  # another fraction and seed: the splits come from the disk cache
    assert (again.cache.misses, again.cache.hits) == (0, splits)
    tiny = TASKS.get("segmentation")({**params, "feature_cache_max_gb": 1e-9, "cache_dir": str(tmp_path / "t")})
    tiny.run(pre, store, 100, 0, tmp_path / "d")
    assert tiny.cache.misses == 0 and not (tmp_path / "t").exists()  # over the limit: images stream
