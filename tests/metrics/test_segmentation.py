import math

import numpy as np
import pytest
import torch

from cxrbench.metrics.segmentation import dice_reference, dice_strict


def _case():
    """4 images 8x8: exact hit, empty-vs-empty, false positive on a negative, 1-of-4 pixel overlap."""
    gt = np.zeros((4, 8, 8))
    prob = np.zeros((4, 8, 8))
    gt[0, :2, :2] = 1
    prob[0, :2, :2] = 0.9  # Dice 1
    prob[2, 5, 5:8] = 0.8  # empty GT, 3 predicted pixels: reference 0, strict 0
    gt[3, 4:6, 4:6] = 1
    prob[3, 4, 4] = 0.7  # Dice 2*1/(1+4) = 0.4
    return prob, gt


def test_reference_dice_with_partial_last_batch():
    prob, gt = _case()
    # batches [1, 1 (empty-vs-empty), 0] and [0.4]: mean of batch means = (2/3 + 0.4) / 2
    assert dice_reference(prob, gt, batch_size=3) == pytest.approx((2 / 3 + 0.4) / 2)
    # one batch of everything = plain mean over images
    assert dice_reference(prob, gt, batch_size=4) == pytest.approx((1 + 1 + 0 + 0.4) / 4)
    assert dice_reference(prob, gt, batch_size=1) == pytest.approx((1 + 1 + 0 + 0.4) / 4)
    # batches [1, 1] and [0, 0.4]
    assert dice_reference(prob, gt, batch_size=2) == pytest.approx((1 + 0.2) / 2)


def test_reference_empty_vs_empty_scores_one():
    z = np.zeros((2, 4, 4))
    assert dice_reference(z, z, batch_size=2) == 1.0
    assert math.isnan(dice_strict(z, z))
    assert math.isnan(dice_strict(z, z, mode="global"))


def test_strict_image_excludes_empty_vs_empty_and_global_pools_pixels():
    prob, gt = _case()
    assert dice_strict(prob, gt) == pytest.approx((1 + 0 + 0.4) / 3)
    # global: 2 (4 + 0 + 1) / ((4 + 4) + (3 + 0) + (1 + 4))
    assert dice_strict(prob, gt, mode="global") == pytest.approx(10 / 16)


def test_threshold_is_strict_and_torch_inputs_work():
    gt = torch.zeros(1, 2, 2)
    gt[0, 0, 0] = 1
    prob = torch.full((1, 2, 2), 0.5)
    prob[0, 0, 0] = 0.5  # exactly at threshold: not positive -> empty prediction vs non-empty GT
    assert dice_reference(prob, gt, batch_size=1) == 0.0
    prob[0, 0, 0] = 0.51
    assert dice_reference(prob, gt, batch_size=1) == pytest.approx(2 * 1 / (1 + 1))


def test_logits_are_rejected_unless_flagged():
    gt = np.zeros((1, 3, 3))
    gt[0, 1, 1] = 1
    logits = np.full((1, 3, 3), -4.0)
    logits[0, 1, 1] = 3.0
    with pytest.raises(ValueError, match="probabilities"):
        dice_reference(logits, gt, batch_size=1)
    assert dice_reference(logits, gt, batch_size=1, from_logits=True) == 1.0
    assert dice_strict(logits, gt, from_logits=True, mode="global") == 1.0


def test_shape_mismatch_and_bad_mode():
    with pytest.raises(ValueError, match="shape"):
        dice_strict(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="mode"):
        dice_strict(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), mode="micro")
