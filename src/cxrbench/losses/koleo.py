"""KoLeo regulariser (Kozachenko-Leonenko differential entropy estimator), as in DINOv2."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """x: (B, D). L = -(1/B) sum_i log( ||x_i - x_j(i) + eps||_2 + eps ), x L2-normalised, j(i) = argmax_{j != i}
    <x_i, x_j> (nearest neighbour, chosen without gradient).

    As DINOv2's ``KoLeoLoss`` (``dinov2/loss/koleo_loss.py``): the diagonal of the dot products is filled with -1
    before the argmax (``pairwise_NNs_inner``), and the distance is ``nn.PairwiseDistance(2, eps=1e-8)``, which
    adds eps to the DIFFERENCE before the norm, so an exact duplicate is at distance eps * sqrt(D), not 0.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss: expected x of shape (B >= 2, D), got {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.t()
        sim.fill_diagonal_(-1.0)
        nn_idx = sim.argmax(dim=1)
    dist = (x - x[nn_idx] + eps).norm(dim=-1)
    return -torch.log(dist + eps).mean()
