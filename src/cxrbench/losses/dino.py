"""DINO self-distillation loss on CLS-token prototype scores (DINO / DINOv2 / RAD-DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def teacher_softmax_centered(
    teacher_logits: torch.Tensor, center: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Teacher targets: softmax((t - c) / tau_t) along the last dim. teacher_logits (..., K), center (1, K)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, *, momentum: float = 0.9) -> torch.Tensor:
    """EMA of the teacher's mean logit: c <- m c + (1 - m) mean_b t_b. center (1, K), teacher_logits (N, K)."""
    return center * momentum + teacher_logits.float().mean(dim=0, keepdim=True) * (1 - momentum)


def dino_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], *, student_temperature: float = 0.1
) -> torch.Tensor:
    """Cross-entropy between teacher targets and student predictions over crop pairs.

    student_logits: list of (B, K), the global crops first (same order as ``teacher_probs``), then the local crops.
    teacher_probs: list of (B, K) teacher targets for the global crops (already centred and sharpened).
    L = mean over pairs (s, t) with s != t of  mean_b  -sum_k P_t[b, k] log softmax(S_s[b] / tau_s)[k],
    i.e. every student crop against every OTHER teacher global crop (a global crop is never matched with itself).
    """
    total, n_terms = 0.0, 0
    for s_idx, s in enumerate(student_logits):
        log_p = F.log_softmax(s.float() / student_temperature, dim=-1)
        for t_idx, t in enumerate(teacher_probs):
            if s_idx == t_idx:
                continue
            total = total + (-(t * log_p).sum(dim=-1)).mean()
            n_terms += 1
    if n_terms == 0:
        raise ValueError("dino_loss: no (student, other teacher) crop pair; need >= 2 crops")
    return total / n_terms
