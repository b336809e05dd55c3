"""M-FLAG losses: orthogonality of the visual latent space and positive-only alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def orthogonality_loss(
    v: torch.Tensor, *, off_diagonal_weight: float = 0.0051, batch_size: int | None = None
) -> torch.Tensor:
    """M-FLAG orthogonality loss on the raw pooled visual features.

    v: (B, D), not projected, not normalised. G = V^T V / n with n = B (``batch_size=None``, the paper), or
    n = ``batch_size``: the released code (``utils/utils_trainer.py``, ``trainer_wBert.orthogonal_loss``:
    ``logits.div_(self.train_batch_size)``) divides by the configured per-device batch size, which differs from B
    on a last partial batch. Returns L = 0.5 * ( sum_i (G_ii - 1)^2 + w * sum_{i != j} G_ij^2 ),
    w = ``off_diagonal_weight``.
    """
    if v.ndim != 2:
        raise ValueError(f"orthogonality_loss: expected v of shape (B, D), got {tuple(v.shape)}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"orthogonality_loss: batch_size must be None or a positive integer, got {batch_size!r}")
    n = v.shape[0] if batch_size is None else batch_size
    g = v.t() @ v / n
    diag = torch.diagonal(g)
    on = (diag - 1).pow(2).sum()
    off = g.pow(2).sum() - diag.pow(2).sum()
    return 0.5 * (on + off_diagonal_weight * off)


def alignment_loss(zv: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """M-FLAG alignment (positives only): L = mean_i (4 - 4 cos(zv_i, zt_i)). zv, zt: (B, D)."""
    return (4 - 4 * F.cosine_similarity(zv, zt, dim=-1)).mean()
