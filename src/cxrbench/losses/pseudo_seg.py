"""G2D pseudo-segmentation loss on the decoder's logit map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARIANTS = ("paper", "code")


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
    logits: torch.Tensor, target: torch.Tensor, *, variant: str = "paper", smooth: float = 1.0,
    code_bce_weight: float = 0.2,
) -> torch.Tensor:
    """Pseudo-segmentation loss of G2D.

    logits: (B, 1, H, W) raw decoder outputs; target: (B, 1, H, W) pseudo-mask in {0, 1}.

    - ``variant="paper"``: L = 0.5 * (Dice(sigmoid(logits), y) + BCE(sigmoid(logits), y)), BCE averaged over pixels;
    - ``variant="code"``: L = Dice(logits, y) + 0.2 * BCEWithLogits(logits, y) - the released code's Dice is computed on
      the RAW logits (no sigmoid), a bug reproduced here only under this variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"pseudo_seg_loss: variant must be one of {VARIANTS}, got {variant!r}")
    if logits.shape != target.shape:
        raise ValueError(f"pseudo_seg_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)  # == BCE(sigmoid(logits)), numerically stable
    if variant == "paper":
        return 0.5 * (soft_dice_loss(torch.sigmoid(logits), target, smooth=smooth) + bce)
    return soft_dice_loss(logits, target, smooth=smooth) + code_bce_weight * bce
