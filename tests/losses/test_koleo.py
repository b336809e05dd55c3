import math

import pytest
import torch

from cxrbench.losses import koleo_loss


def test_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # unit vectors e1, e2, -e1
    # nearest distances: e1 -> e2 sqrt2, e2 -> sqrt2, -e1 -> e2 sqrt2
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2) + 1e-8), rel=1e-6)


def test_slow_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g)
    n = x / x.norm(dim=1, keepdim=True)
    ref = 0.0
    for i in range(7):
        d = min(float((n[i] - n[j]).norm()) for j in range(7) if j != i)
        ref -= math.log(d + 1e-8)
    assert koleo_loss(x).item() == pytest.approx(ref / 7, rel=1e-5)


def test_duplicates_are_penalised_and_finite():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = koleo_loss(x)
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-6)
    with pytest.raises(ValueError):
        koleo_loss(torch.ones(1, 3))
