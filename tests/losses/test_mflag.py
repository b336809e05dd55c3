import numpy as np
import pytest
import torch

from cxrbench.losses import alignment_loss, orthogonality_loss


def test_orthogonality_hand_computed():
    v = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    # G = V^T V / 2 = [[5, 1], [1, 2]]; 0.5 * ((5-1)^2 + (2-1)^2 + 0.0051 * (1 + 1))
    expected = 0.5 * (16 + 1 + 0.0051 * 2)
    assert orthogonality_loss(v).item() == pytest.approx(expected, rel=1e-6)
    # the released code divides by the configured batch size (4 here): G = [[2.5, .5], [.5, 1]]
    exp4 = 0.5 * (1.5**2 + 0.0 + 0.0051 * 0.5)
    assert orthogonality_loss(v, batch_size=4).item() == pytest.approx(exp4, rel=1e-6)


def test_orthogonality_slow_reference():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(6, 5, generator=g)
    G = v.t() @ v / 6
    ref = 0.0
    for i in range(5):
        for j in range(5):
            ref += (G[i, j] - 1) ** 2 if i == j else 0.0051 * G[i, j] ** 2
    assert orthogonality_loss(v).item() == pytest.approx(0.5 * float(ref), rel=1e-5)
    assert orthogonality_loss(torch.eye(3) * 3**0.5).item() == pytest.approx(0.0, abs=1e-6)


def _np_orth(v, n, w=0.0051):
    """The released ``trainer_wBert.orthogonal_loss`` re-derived in numpy: G = V^T V / n, 0.5 (on + w off)."""
    g = v.T.astype(np.float64) @ v.astype(np.float64) / n
    on = ((np.diag(g) - 1) ** 2).sum()
    off = (g**2).sum() - (np.diag(g) ** 2).sum()
    return 0.5 * (on + w * off)


def test_orthogonality_last_partial_batch():
    # configured per-device batch 8, last batch of 3 images: the code divides by 8, the paper by 3
    v = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    t = torch.from_numpy(v)
    assert orthogonality_loss(t, batch_size=8).item() == pytest.approx(_np_orth(v, 8), rel=1e-5)
    assert orthogonality_loss(t).item() == pytest.approx(_np_orth(v, 3), rel=1e-5)
    assert _np_orth(v, 8) != pytest.approx(_np_orth(v, 3), rel=1e-2)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            orthogonality_loss(t, batch_size=bad)


def test_alignment():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # cos = 1, 0
    assert alignment_loss(a, b).item() == pytest.approx((0 + 4) / 2)
    assert alignment_loss(a, -a).item() == pytest.approx(8.0)
