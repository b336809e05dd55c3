"""ConVIRT-style global-only contrastive pretraining: G2D without its dense branch (no decoder, no pseudo-masks).

Same image/text towers, projectors and attention pooling as G2D; loss = symmetric InfoNCE alone
(``infonce_reduction``, ``temperature``, ``normalize`` as G2D; ``seg_loss`` / ``pseudo_mask`` are not used). The
natural ablation of G2D and the papers' most common baseline.
"""

from __future__ import annotations

from cxrbench.methods.g2d import G2D
from cxrbench.registry import METHODS


@METHODS.register("convirt")
class ConVIRT(G2D):
    name = "convirt"
    has_text = True
    has_decoder = False
    dense = False
