"""Pretraining losses: pure functions of tensors and explicit hyper-parameters, one loss per module."""

from cxrbench.losses.dino import dino_loss, teacher_softmax_centered, update_center
from cxrbench.losses.ibot import ibot_patch_loss
from cxrbench.losses.infonce import symmetric_infonce
from cxrbench.losses.koleo import koleo_loss
from cxrbench.losses.mflag import alignment_loss, orthogonality_loss
from cxrbench.losses.pseudo_seg import pseudo_seg_loss, soft_dice_loss
from cxrbench.losses.sinkhorn import sinkhorn_knopp

__all__ = [
    "alignment_loss",
    "dino_loss",
    "ibot_patch_loss",
    "koleo_loss",
    "orthogonality_loss",
    "pseudo_seg_loss",
    "sinkhorn_knopp",
    "soft_dice_loss",
    "symmetric_infonce",
    "teacher_softmax_centered",
    "update_center",
]
