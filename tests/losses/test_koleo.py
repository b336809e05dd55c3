import math

import numpy as np
import pytest
import torch

from cxrbench.losses import koleo_loss

EPS = 1e-8


def _np_koleo(x):
    """DINOv2's KoLeoLoss re-derived in float64 numpy: nearest neighbour by dot product (diagonal filled with -1),
    distance ||x_i - x_j + eps|| (nn.PairwiseDistance(2, eps=1e-8)), loss -mean log(d + eps)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
    dots = x @ x.T
    np.fill_diagonal(dots, -1.0)
    nn = dots.argmax(1)
    d = np.linalg.norm(x - x[nn] + EPS, axis=1)
    return float(-np.log(d + EPS).mean())


def test_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # unit vectors e1, e2, -e1
    # nearest distances: e1 -> e2 sqrt2, e2 -> sqrt2, -e1 -> e2 sqrt2 (eps inside the norm: negligible here)
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2) + EPS), rel=1e-6)


def test_slow_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g)
    assert koleo_loss(x).item() == pytest.approx(_np_koleo(x.numpy()), rel=1e-5)


def test_exact_duplicate_distance_is_eps_sqrt_d():
    # two coinciding CLS tokens: PairwiseDistance(eps) gives ||eps * 1_D|| = eps sqrt(D), not 0
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    d_dup = EPS * math.sqrt(3)
    d_far = math.sqrt(2)  # the third vector's nearest neighbour is at sqrt 2
    expected = -(2 * math.log(d_dup + EPS) + math.log(d_far + EPS)) / 3
    loss = koleo_loss(x)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(_np_koleo(x.detach().numpy()), rel=1e-6)
    assert loss.item() != pytest.approx(-(2 * math.log(EPS) + math.log(d_far + EPS)) / 3, rel=1e-3)  # old: no eps
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        koleo_loss(torch.ones(1, 3))
