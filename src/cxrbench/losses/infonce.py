"""Symmetric InfoNCE (CLIP / ConVIRT / G2D global alignment)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum")


def symmetric_infonce(
    img: torch.Tensor, txt: torch.Tensor, *, temperature: float = 0.07, reduction: str = "mean"
) -> torch.Tensor:
    """Symmetric InfoNCE between paired image and text embeddings.

    img, txt: (B, D), paired by row (not necessarily normalised: both are L2-normalised here).
    With s_ij = <v_i, t_j> / tau and CE_i2t = -(1/B) sum_i log softmax_j(s_ij)[i],
    CE_t2i = -(1/B) sum_i log softmax_j(s_ji)[i]:

    - ``reduction="mean"``: L = (CE_i2t + CE_t2i) / 2 (the paper prints one direction averaged over the batch;
      the mean of the two directions keeps that scale);
    - ``reduction="sum"``:  L = CE_i2t + CE_t2i (the released G2D code, ``PRETRAIN/utils/loss.py`` ``clip_loss``,
      returns ``loss_t + loss_i``).

    Returns a scalar.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"symmetric_infonce: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"symmetric_infonce: expected img, txt of equal shape (B, D), got {img.shape}, {txt.shape}")
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t() / temperature
    target = torch.arange(img.shape[0], device=img.device)
    total = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    return total / 2 if reduction == "mean" else total
