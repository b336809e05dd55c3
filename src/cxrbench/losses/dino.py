"""DINO self-distillation loss on CLS-token prototype scores (DINO / DINOv2 / RAD-DINO), and the teacher's centre.

Under ``torch.distributed`` (only when a process group is initialised) the centre's batch statistic is reduced
across processes as DINOv2 does (``dinov2/loss/dino_clstoken_loss.py``, ``DINOLoss.reduce_center_update`` /
``apply_center_update``: ``all_reduce`` of the batch sum, divided by the global count), so N processes with B
rows each update the centre exactly as one process with N x B rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed() -> bool:
    """True when a torch.distributed process group is initialised (every collective below is then taken)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over processes (``sum`` | ``max``) when distributed; ``t`` itself otherwise."""
    if not distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def teacher_softmax_centered(
    teacher_logits: torch.Tensor, center: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Teacher targets: softmax((t - c) / tau_t) along the last dim. teacher_logits (..., K), center (1, K)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, *, momentum: float = 0.9) -> torch.Tensor:
    """EMA of the teacher's mean logit: c <- m c + (1 - m) (sum_b t_b) / N. center (1, K), teacher_logits (n, K).

    Sum and count n are summed over processes when distributed (N = total rows: the mean of the global batch;
    a collective, so every process must call it, also with n = 0 rows). N = 0 everywhere (e.g. no masked patch
    for the iBOT centre) leaves the centre unchanged.

    DINOv2's DINO centre divides the reduced sum by B x world size (equal local batches: the same value). Its
    iBOT centre (``ibot_patch_loss.py``, ``reduce_center_update`` of the (1, n, K) masked-patch logits) averages
    the per-process MEANS, which weights a process's patches by 1 / (its masked count); here the iBOT centre is
    the mean over all masked patches of the global batch, which one process holding that batch computes.
    """
    t = teacher_logits.float().reshape(-1, center.shape[-1])
    stats = torch.cat([t.sum(dim=0), t.new_tensor([t.shape[0]])]).unsqueeze(0)  # (1, K + 1): one collective
    stats = all_reduce(stats)
    n = float(stats[0, -1])
    if n == 0:
        return center
    return center * momentum + stats[:, :-1] / n * (1 - momentum)


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
