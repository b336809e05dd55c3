"""Sinkhorn-Knopp centering of teacher logits (SwAV / DINOv2 option), reduced across processes as DINOv2 does."""

from __future__ import annotations

import torch

from cxrbench.losses.dino import all_reduce


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, *, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """teacher_logits: (B, K) -> teacher targets (B, K), rows sum to 1.

    Q = exp(logits / tau)^T (K x B), normalised to sum 1; then alternately rows scaled to 1/K and columns to 1/B,
    ``n_iterations`` times; returned as B x Q^T so each sample's row is a distribution (equal prototype mass).

    Distributed (a process group initialised), as DINOv2's ``sinkhorn_knopp_teacher``
    (``dinov2/loss/dino_clstoken_loss.py``; ``ibot_patch_loss.py`` for the masked patches, whose B is the
    all-reduced count of masked patches): the total of Q and the row (prototype) sums are all-reduced and B is the
    global number of samples, so the result on each process equals its rows of one process's result on the
    concatenated batch. The logits are shifted by their global maximum before exp (cancelled by the first
    normalisation; it keeps exp finite at small tau). Every process must call this, also with B = 0 rows.
    """
    t = teacher_logits.float()
    k = t.shape[-1]
    b = float(all_reduce(t.new_tensor(float(t.shape[0]))))
    if b == 0:
        return t.clone()
    shift = all_reduce(t.max() if t.numel() else t.new_tensor(float("-inf")), op="max")
    q = torch.exp((t - shift) / temperature).t()
    q /= all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()
