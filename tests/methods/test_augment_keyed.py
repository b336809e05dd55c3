"""Keyed augmentation: views as a pure function of (seed, step, sample id), independent of batch composition."""

import numpy as np
import pytest
import torch

from cxrbench.methods._augment import (
    MultiCrop,
    MultiCropConfig,
    ViewAugment,
    ViewConfig,
    batch_generator,
    sample_generators,
    sample_seed,
    warp_matrices,
)

CFG = ViewConfig.from_params({"scale": [0.3, 1.0], "degrees": 10, "perspective": 0.1, "autocontrast": 0.5,
                              "brightness": 0.2, "contrast": 0.2, "hflip": 0.5}, 8)


def _images(n=4):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def test_sample_seed_is_the_seedsequence_hash():
    lo, hi = np.random.SeedSequence([3, 7, 11, 0]).generate_state(2, dtype=np.uint32).tolist()
    assert sample_seed(3, 7, 11) == (hi << 32 | lo) & (2**63 - 1)
    seeds = {sample_seed(s, t, i) for s in (0, 1) for t in (0, 1) for i in (0, 1)}
    assert len(seeds) == 8  # every coordinate matters
    assert sample_seed(0, 0, 0, stream=1) != sample_seed(0, 0, 0)


def test_per_image_generators_give_row_i_from_generator_i():
    gens = sample_generators(0, 5, [10, 20])
    m = warp_matrices(2, CFG, gens)
    alone = warp_matrices(1, CFG, sample_generators(0, 5, [20]))
    assert torch.equal(m[1:], alone)  # image 20's matrix does not depend on image 10 being in the batch
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        warp_matrices(3, CFG, gens)


def test_view_is_a_pure_function_of_seed_step_and_id():
    x, ids = _images(), torch.tensor([5, 6, 7, 8])
    a, b = ViewAugment(CFG, seed=1), ViewAugment(CFG, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    va = a(x, step=3, ids=ids)
    a(x)  # using the owned stateful generator in between changes nothing
    assert torch.equal(a(x, step=3, ids=ids), va) and torch.equal(b(x, step=3, ids=ids), va)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(b(x[perm], step=3, ids=ids[perm]), va[perm])  # batch order / composition irrelevant
    assert torch.equal(b(x[2:], step=3, ids=ids[2:]), va[2:])
    assert not torch.equal(b(x, step=4, ids=ids), va)  # another step, other views
    assert not torch.equal(ViewAugment(CFG, seed=2)(x, step=3, ids=ids), va)  # another seed, other views
    assert torch.equal(b(x, step=3), b(x, step=3, ids=torch.arange(4)))  # default ids: positions


def test_multicrop_keyed_and_batch_generator():
    mc = MultiCrop(MultiCropConfig(global_size=8, local_size=4, n_local=2), seed=0)
    x, ids = _images(3), torch.tensor([1, 2, 3])
    g1, l1 = mc(x, step=2, ids=ids)
    g2, l2 = mc(x[1:], step=2, ids=ids[1:])
    assert all(torch.equal(a[1:], b) for a, b in zip(g1 + l1, g2 + l2, strict=True))
    assert not torch.equal(g1[0], g1[1])  # the two global crops differ
    r1 = torch.rand(3, generator=batch_generator(0, 2, ids, stream=1))
    r2 = torch.rand(3, generator=batch_generator(0, 2, [1, 2, 3], stream=1))
    assert torch.equal(r1, r2) and not torch.equal(r1, torch.rand(3, generator=batch_generator(0, 3, ids)))
