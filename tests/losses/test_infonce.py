import math

import pytest
import torch
import torch.nn.functional as F

from cxrbench.losses import symmetric_infonce


def _slow_reference(img, txt, tau):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    B = img.shape[0]
    i2t = t2i = 0.0
    for i in range(B):
        s_row = [float(img[i] @ txt[j]) / tau for j in range(B)]
        s_col = [float(img[j] @ txt[i]) / tau for j in range(B)]
        i2t += -(s_row[i] - math.log(sum(math.exp(v) for v in s_row)))
        t2i += -(s_col[i] - math.log(sum(math.exp(v) for v in s_col)))
    return i2t / B, t2i / B


def test_hand_computed_orthogonal_pairs():
    # identical orthonormal pairs: s_ii = 1/tau, s_ij = 0 -> CE = -log(e^{1/tau} / (e^{1/tau} + B - 1)) per row
    B, tau = 3, 0.5
    e = torch.eye(B)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2))
    assert symmetric_infonce(e, e, temperature=tau, reduction="mean").item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_infonce(e, e, temperature=tau, reduction="sum").item() == pytest.approx(2 * expected, rel=1e-6)


def test_against_slow_reference_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    i2t, t2i = _slow_reference(img, txt, 0.07)
    assert symmetric_infonce(img, txt).item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    assert symmetric_infonce(3 * img, txt, reduction="sum").item() == pytest.approx(i2t + t2i, rel=1e-5)


def test_bad_reduction_and_shape():
    with pytest.raises(ValueError, match="reduction"):
        symmetric_infonce(torch.ones(2, 2), torch.ones(2, 2), reduction="x")
    with pytest.raises(ValueError, match="shape"):
        symmetric_infonce(torch.ones(2, 2), torch.ones(3, 2))
