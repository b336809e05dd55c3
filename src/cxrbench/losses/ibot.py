"""iBOT masked-patch self-distillation loss (DINOv2 / RAD-DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_patch_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor, *,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy at masked patch positions, averaged per image over its masked patches, then over images.

    masks: (B, N) bool. student_logits / teacher_probs either (B, N, K) for every patch, or (M, K) for the masked
    patches only (M = masks.sum(), in row-major order of ``masks``, i.e. ``x[masks]``; what a large head computes).
    Student scores come from the MASKED input, teacher targets (centred, sharpened) from the same crop unmasked.
    Only images with at least one masked patch count:
    L = (1 / |{b: M_b > 0}|) sum_b (1 / M_b) sum_{n masked} -sum_k P[b, n, k] log softmax(S[b, n] / tau_s)[k].
    """
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)
    m = masks.to(ce.dtype)
    n_masked = m.sum(dim=1)  # (B,)
    n_images = (n_masked > 0).sum().clamp(min=1)
    if ce.ndim == 2:  # (B, N): every patch
        return ((ce * m).sum(dim=1) / n_masked.clamp(min=1)).sum() / n_images
    weight = (m / n_masked.clamp(min=1).unsqueeze(1))[masks]  # (M,) 1 / M_b of each entry's image
    return (ce * weight).sum() / n_images
