"""G2D pseudo-segmentation loss on the decoder's logit map."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(pred: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, per image then averaged over the batch.

    pred, target: (B, 1, H, W) (pred: probabilities in the correct use). For image b with p = pred_b, g = target_b
    flattened: D_b = 1 - (2 sum(p g) + smooth) / (sum p + sum g + smooth); returns mean_b D_b.
    """
    p = pred.flatten(1)
    g = target.flatten(1).to(p.dtype)
    dice = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1 - dice).mean()


def pseudo_seg_loss(
    logits: torch.Tensor, target: torch.Tensor, *, dice_on_logits: bool = False, dice_smooth: float = 1.0,
    dice_weight: float = 0.5, bce_weight: float = 0.5,
) -> torch.Tensor:
    """Pseudo-segmentation loss of G2D: L = dice_weight * Dice(p, y) + bce_weight * BCEWithLogits(logits, y).

    logits: (B, 1, H, W) raw decoder outputs; target: (B, 1, H, W) pseudo-mask in {0, 1}. Dice is
    :func:`soft_dice_loss` with smoothing ``dice_smooth`` on p = sigmoid(logits), or on the RAW logits when
    ``dice_on_logits`` (a bug of the released code, kept only to reproduce it); BCE is averaged over pixels.

    - paper (defaults): 0.5 * (softDice(sigmoid(logits), y) + BCE), smooth 1;
    - released code (``PRETRAIN/utils/loss.py`` ``bceDiceLoss``): ``dice_on_logits=True, dice_smooth=1e-5,
      dice_weight=1, bce_weight=0.2``.
    """
    if logits.shape != target.shape:
        raise ValueError(f"pseudo_seg_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)  # == BCE(sigmoid(logits)), numerically stable
    p = logits if dice_on_logits else torch.sigmoid(logits)
    return dice_weight * soft_dice_loss(p, target, smooth=dice_smooth) + bce_weight * bce
