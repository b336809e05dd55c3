import math

import pytest
import torch

from cxrbench.losses import pseudo_seg_loss, soft_dice_loss

CODE = {"dice_on_logits": True, "dice_smooth": 1e-5, "dice_weight": 1.0, "bce_weight": 0.2}  # bceDiceLoss


def _sig(v):
    return 1 / (1 + math.exp(-v))


def test_soft_dice_hand_computed():
    p = torch.tensor([0.5, 1.0, 0.0, 0.25]).reshape(1, 1, 2, 2)
    g = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    # 2*sum(pg) = 3, sum p = 1.75, sum g = 2, smooth 1: 1 - 4 / 4.75
    assert soft_dice_loss(p, g).item() == pytest.approx(1 - 4 / 4.75)
    assert soft_dice_loss(g, g, smooth=0.0).item() == pytest.approx(0.0)


def test_paper_form_hand_computed():
    logits = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    y = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    p0, p1 = 0.5, _sig(2.0)
    dice = 1 - (2 * p0 + 1) / (p0 + p1 + 1 + 1)
    bce = -(math.log(p0) + math.log(1 - p1)) / 2
    assert pseudo_seg_loss(logits, y).item() == pytest.approx(0.5 * (dice + bce), rel=1e-6)  # defaults = paper


def test_code_form_uses_raw_logits_smooth_1e5():
    logits = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    y = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    s = 1e-5
    dice_raw = 1 - (2 * 0.0 + s) / (0.0 + 2.0 + 1 + s)  # the bug: logits used as probabilities
    bce = -(math.log(0.5) + math.log(1 - _sig(2.0))) / 2
    got = pseudo_seg_loss(logits, y, **CODE).item()
    assert got == pytest.approx(dice_raw + 0.2 * bce, rel=1e-6)
    assert got != pytest.approx(pseudo_seg_loss(logits, y).item())


def test_weights_and_smoothing_are_independent_parameters():
    logits = torch.tensor([1.0, -1.0, 3.0]).reshape(1, 1, 1, 3)
    y = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 3)
    p = [_sig(v) for v in (1.0, -1.0, 3.0)]
    dice = 1 - (2 * (p[0] + p[1]) + 0.3) / (sum(p) + 2 + 0.3)
    bce = -(math.log(p[0]) + math.log(p[1]) + math.log(1 - p[2])) / 3
    got = pseudo_seg_loss(logits, y, dice_smooth=0.3, dice_weight=2.0, bce_weight=0.0).item()
    assert got == pytest.approx(2 * dice, rel=1e-6)
    assert pseudo_seg_loss(logits, y, dice_weight=0.0, bce_weight=1.5).item() == pytest.approx(1.5 * bce, rel=1e-6)


def test_per_image_mean_and_errors():
    p = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    g = torch.ones(2, 1, 2, 2)
    assert soft_dice_loss(p, g, smooth=0.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ"):
        pseudo_seg_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))
