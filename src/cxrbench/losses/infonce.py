"""Symmetric InfoNCE (CLIP / ConVIRT / G2D global alignment)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARIANTS = ("paper", "code")


def symmetric_infonce(
    img: torch.Tensor, txt: torch.Tensor, *, temperature: float = 0.07, variant: str = "paper"
) -> torch.Tensor:
    """Symmetric InfoNCE between paired image and text embeddings.

    img, txt: (B, D), paired by row (not necessarily normalised: both are L2-normalised here).
    With s_ij = <v_i, t_j> / tau and CE_i2t = -(1/B) sum_i log softmax_j(s_ij)[i],
    CE_t2i = -(1/B) sum_i log softmax_j(s_ji)[i]:

    - ``variant="paper"``: L = (CE_i2t + CE_t2i) / 2 (mean of the two directions; the paper prints one direction
      averaged over the batch, the symmetric mean keeps that scale);
    - ``variant="code"``:  L = CE_i2t + CE_t2i (the released G2D code sums the two cross-entropies).

    Returns a scalar.
    """
    if variant not in VARIANTS:
        raise ValueError(f"symmetric_infonce: variant must be one of {VARIANTS}, got {variant!r}")
    if img.shape != txt.shape or img.ndim != 2:
        raise ValueError(f"symmetric_infonce: expected img, txt of equal shape (B, D), got {img.shape}, {txt.shape}")
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t() / temperature
    target = torch.arange(img.shape[0], device=img.device)
    total = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    return total / 2 if variant == "paper" else total
