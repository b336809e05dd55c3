"""iBOT masked-patch self-distillation loss (DINOv2 / RAD-DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_patch_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor, *,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy at masked patch positions, normalised as DINOv2's ``iBOTPatchLoss.forward_masked``.

    masks: (B, N) bool over ALL B images of the student's global batch (masked or not). student_logits /
    teacher_probs either (B, N, K) for every patch, or (M, K) for the masked patches only (M = masks.sum(), in
    row-major order of ``masks``, i.e. ``x[masks]``; what a large head computes). Student scores come from the
    MASKED input, teacher targets (centred, sharpened) from the same crop unmasked. With M_b the masked patches of
    image b, each masked patch's cross-entropy is weighted by 1 / M_b and the sum is divided by B, so an image
    without masked patches counts in the denominator (``dinov2/loss/ibot_patch_loss.py``, ``forward_masked``:
    ``masks_weight = 1 / masks.sum(-1).clamp(min=1)``, ``-loss.sum() / student_masks_flat.shape[0]``):
    L = (1 / B) sum_b (1 / max(M_b, 1)) sum_{n masked} -sum_k P[b, n, k] log softmax(S[b, n] / tau_s)[k].
    """
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)
    m = masks.to(ce.dtype)
    inv = 1 / m.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    n_images = masks.shape[0]
    if ce.ndim == 2:  # (B, N): every patch
        return (ce * m * inv).sum() / n_images
    weight = (m * inv)[masks]  # (M,) 1 / M_b of each entry's image
    return (ce * weight).sum() / n_images
