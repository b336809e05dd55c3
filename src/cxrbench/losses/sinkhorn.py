"""Sinkhorn-Knopp centering of teacher logits (SwAV / DINOv2 option)."""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, *, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """teacher_logits: (B, K) -> teacher targets (B, K), rows sum to 1.

    Q = exp(logits / tau)^T (K x B), normalised to sum 1; then alternately rows scaled to 1/K and columns to 1/B,
    ``n_iterations`` times; returned as B x Q^T so each sample's row is a distribution (equal prototype mass).
    """
    q = torch.exp((teacher_logits.float() - teacher_logits.float().max()) / temperature).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()
