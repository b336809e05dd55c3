import pytest
import torch

from cxrbench.methods._augment import (
    MultiCrop,
    MultiCropConfig,
    ViewAugment,
    ViewConfig,
    block_masks,
    to_input,
    warp,
    warp_matrices,
)


def test_identity_view_reproduces_the_image():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = ViewConfig(size=8)
    out = warp(x, warp_matrices(2, cfg, torch.Generator().manual_seed(1)), 8)
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_and_crop_geometry():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    flipped = warp(x, warp_matrices(1, ViewConfig(size=4, hflip=1.0), torch.Generator()), 4)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    # a crop of a quarter of the area covering the top-left quadrant (scale 0.25, centre at -0.5, -0.5)
    m = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 0.5, -0.5], [0.0, 0.0, 1.0]]])
    assert torch.allclose(warp(x, m, 2), x[..., :2, :2], atol=1e-5)


def test_generator_owned_and_deterministic():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = ViewConfig.from_params({"scale": [0.3, 1.0], "degrees": 10, "perspective": 0.1, "autocontrast": 0.5,
                                  "brightness": 0.2, "contrast": 0.2}, 8)
    a, b = ViewAugment(cfg, seed=5), ViewAugment(cfg, seed=5)
    torch.manual_seed(123)  # the global RNG plays no part
    va = a(x)
    torch.manual_seed(999)
    assert torch.equal(va, b(x)) and va.shape == (3, 1, 8, 8)
    assert not torch.equal(a(x), va)  # the generator advances
    assert va.min() >= 0 and va.max() <= 1
    with pytest.raises(KeyError, match="unknown keys"):
        ViewConfig.from_params({"rotate": 3}, 8)


def test_multicrop_shapes():
    mc = MultiCrop(MultiCropConfig(global_size=16, local_size=8, n_local=3), seed=0)
    g, loc = mc(torch.rand(2, 1, 32, 32))
    assert [t.shape for t in g] == [(2, 1, 16, 16)] * 2 and [t.shape for t in loc] == [(2, 1, 8, 8)] * 3


def test_block_masks_ratio_and_share():
    m = block_masks(8, 10, 10, ratio=(0.1, 0.5), probability=0.5, gen=torch.Generator().manual_seed(0))
    counts = m.sum(1)
    assert (counts[4:] == 0).all() and (counts[:4] > 0).all()
    targets = torch.linspace(0.1, 0.5, 4) * 100
    assert ((counts[:4] - targets).abs() <= 12).all(), counts  # reaches its target up to one last block


def test_to_input():
    x = torch.full((1, 1, 2, 2), 0.75)
    out = to_input(x, 0.5, 0.5)
    assert out.shape == (1, 3, 2, 2) and torch.allclose(out, torch.full_like(out, 0.5))
