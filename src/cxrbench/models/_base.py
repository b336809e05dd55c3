"""The one backbone interface every method and task goes through.

A backbone maps a batch of images ``x`` of shape (B, 3, H, W) (grayscale replicated to 3 channels, normalised as the
method says) to a :class:`BackboneOutput`: a pooled vector and a feature pyramid. ResNets give their stages
(strides 2, 4, 8, 16, 32); a ViT gives its last layer's patch-token grid (stride = patch size) and its CLS token as
the pooled vector. Tasks that need fixed strides (U-Net, YOLO) adapt the pyramid with a trainable neck on their side,
so every backbone family works for every task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BackboneOutput:
    """pooled: (B, D). pyramid: list of (B, C_i, H / s_i, W / s_i), strides ascending. tokens: ViT patch tokens
    (B, N, D) or None."""

    pooled: torch.Tensor
    pyramid: list[torch.Tensor]
    tokens: torch.Tensor | None = None


class Backbone(nn.Module):
    """Base class. Subclasses set ``out_dim``, ``pyramid_channels`` and ``pyramid_strides`` in ``__init__``
    and are registered with ``@BACKBONES.register(name)``; ``build_backbone(name, **kwargs)`` constructs one."""

    out_dim: int
    pyramid_channels: list[int]
    pyramid_strides: list[int]

    def forward(self, x: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError
