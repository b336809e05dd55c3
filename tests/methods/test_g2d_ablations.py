"""G2D's Table 5 / Table 8 settings as parameters (issue 13): decoder target, shuffled pseudo-masks, gallery maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrbench.losses import pseudo_seg_loss
from cxrbench.registry import METHODS


def build(tiny_params, corpus, **over):
    return METHODS.get("g2d")({**tiny_params["g2d"], **over, "seed": 0}).build(corpus=corpus)


def test_shuffled_targets_are_the_next_images_masks(tiny_params, corpus, tiny_batch):
    plain, shuffled = build(tiny_params, corpus), build(tiny_params, corpus, shuffle_pseudo_masks=True)
    view = tiny_batch["image"]
    attn = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(1))  # (B, heads, 2 x 2 grid)
    a, b = plain.targets(attn, view), shuffled.targets(attn, view)
    assert not torch.equal(a, b)
    for i in range(4):  # image i is trained on image i-1's mask
        assert torch.equal(b[i], a[(i - 1) % 4])


def test_reconstruction_target_is_the_mse_to_the_view(tiny_params, corpus):
    m = build(tiny_params, corpus, decoder_target="image")
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    view = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = ((1 / (1 + torch.exp(-logits)) - view) ** 2).mean()  # by the formula, not the library call
    assert m.dense_loss(logits, torch.rand(2, 4, 4), view).item() == pytest.approx(expected.item(), rel=1e-6)
    g2d = build(tiny_params, corpus)
    target = g2d.targets(torch.rand(2, 4, 4), view)
    assert g2d.dense_loss(logits, torch.rand(2, 4, 4), view).shape == pseudo_seg_loss(logits, target).shape


def test_no_decoder_target_means_no_dense_loss(tiny_params, corpus, tiny_batch):
    m = build(tiny_params, corpus, decoder_target="none").train()
    out = m(tiny_batch)
    assert "loss_dense" not in out
    torch.testing.assert_close(out["loss"], out["loss_global"])
    with pytest.raises(ValueError, match="decoder_target"):
        build(tiny_params, corpus, decoder_target="mask")


def test_gallery_maps_have_the_shapes_the_figure_reads(tiny_params, corpus, tiny_batch):
    m = build(tiny_params, corpus).train()
    maps = m.pretrain_examples(tiny_batch["image"][:3])
    assert m.training  # restored
    assert maps["image"].shape == maps["pseudo_mask"].shape == maps["prediction"].shape == (3, 32, 32)
    assert maps["attention"].shape == (3, 1, 1)  # resnet18 at 32 px: a 1 x 1 grid
    assert set(maps["pseudo_mask"].unique().tolist()) <= {0.0, 1.0}
    assert float(maps["prediction"].min()) >= 0 and float(maps["prediction"].max()) <= 1
    assert F.mse_loss(maps["image"], tiny_batch["image"][:3, 0]).item() < 1e-12  # eval view = the image at 32 px


def test_convirt_has_no_gallery(tiny_params, corpus, tiny_batch):
    m = METHODS.get("convirt")({**tiny_params["convirt"], "seed": 0}).build(corpus=corpus)
    assert m.pretrain_examples(tiny_batch["image"][:2]) is None
