import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.losses import (
    dino_loss,
    ibot_patch_loss,
    sinkhorn_knopp,
    teacher_softmax_centered,
    update_center,
)


def _ce(p, logits, tau):
    return -sum(pk * lk for pk, lk in zip(p, F.log_softmax(torch.tensor(logits) / tau, 0).tolist(), strict=True))


def test_teacher_centering_and_center_update():
    t = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    c = torch.tensor([[1.0, 0.0]])
    p = teacher_softmax_centered(t, c, temperature=0.5)
    e = math.exp(2 * 2.0) / (math.exp(2 * 0.0) + math.exp(2 * 2.0))
    assert p[0, 1].item() == pytest.approx(e, rel=1e-6)
    new = update_center(c, t, momentum=0.9)
    assert new.tolist()[0] == pytest.approx([0.9 * 1 + 0.1 * 2, 0.1 * 1])


def test_dino_pairs_skip_same_global_crop():
    # 2 global student crops + 1 local, 2 teacher global crops, B = 1, K = 2
    s = [torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 2.0]])]
    t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])]
    tau = 0.1
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]
    ref = sum(_ce(t[ti][0].tolist(), s[si][0].tolist(), tau) for si, ti in pairs) / 4
    assert dino_loss(s, t, student_temperature=tau).item() == pytest.approx(ref, rel=1e-6)


def _np_ce(p, logits, tau):
    """-sum_k p_k log softmax(logits / tau)_k, in float64 numpy."""
    z = np.asarray(logits, dtype=np.float64) / tau
    log_sm = z - z.max() - np.log(np.exp(z - z.max()).sum())
    return float(-(np.asarray(p, dtype=np.float64) * log_sm).sum())


def test_ibot_normalised_over_all_images_like_dinov2_forward_masked():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 4, 5, generator=g)
    t = torch.softmax(torch.randn(3, 4, 5, generator=g), -1)
    m = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    ce = lambda b, n: _np_ce(t[b, n].numpy(), s[b, n].numpy(), 0.1)  # noqa: E731
    img0 = ce(0, 0)
    img1 = (ce(1, 0) + ce(1, 1) + ce(1, 2)) / 3
    # DINOv2: weight 1 / M_b per masked patch, sum divided by ALL 3 images (image 2 has no masked patch but counts)
    expected = (img0 + img1) / 3
    got = ibot_patch_loss(s, t, m, student_temperature=0.1).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx((img0 + img1) / 2, rel=1e-3)  # the old "masked images only" normalisation
    flat = ibot_patch_loss(s[m], t[m], m, student_temperature=0.1).item()  # masked entries only
    assert flat == pytest.approx(expected, rel=1e-5)
    assert ibot_patch_loss(s, t, torch.zeros(3, 4, dtype=torch.bool)).item() == 0.0


def test_sinkhorn_balances_prototypes():
    g = torch.Generator().manual_seed(4)
    q = sinkhorn_knopp(torch.randn(8, 4, generator=g), temperature=1.0, n_iterations=100)
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((4,), 2.0), atol=1e-4)  # each prototype gets B/K mass
    one = sinkhorn_knopp(torch.tensor([[1.0, 0.0]]), temperature=1.0, n_iterations=1)
    assert one.tolist()[0] == pytest.approx([0.5, 0.5])
