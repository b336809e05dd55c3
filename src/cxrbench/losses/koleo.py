"""KoLeo regulariser (Kozachenko-Leonenko differential entropy estimator), as in DINOv2."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """x: (B, D). With x_i L2-normalised: L = -(1/B) sum_i log( min_{j != i} ||x_i - x_j||_2 + eps )."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss: expected x of shape (B >= 2, D), got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():  # the nearest neighbour is chosen without gradient; the distance carries it
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nn_idx = sim.argmax(dim=1)
    dist = (x - x[nn_idx]).norm(dim=-1)
    return -torch.log(dist + eps).mean()
