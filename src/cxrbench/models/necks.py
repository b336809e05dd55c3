"""Necks: turn any backbone pyramid into the strides a head needs.

A ResNet already gives strides 2, 4, 8, 16, 32: every requested stride it has is passed through untouched (no
parameters). A ViT gives one patch grid (stride p = 14 or 16); every requested stride s, p itself included, is
built from it as in ViTDet's simple feature pyramid (Li et al. 2022): ``log2(p / s)`` stride-2 transposed
convolutions to go finer, max pooling to go coarser, then a 1x1 and a 3x3 convolution (each followed by a
channel LayerNorm) to ``channels``. A patch size that is not a power of two relative to s (14 vs 8) is
finished with a bilinear resize to the exact size ``round(h * p / s)``, so a 224 input gives 28 / 14 / 7 for
strides 8 / 16 / 32 whatever the patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Resample(nn.Module):
    """One ViTDet branch: (B, C_in, h, w) at stride ``src`` -> (B, C_out, round(h*src/dst), ...) at stride ``dst``."""

    def __init__(self, in_ch: int, out_ch: int, src: int, dst: int) -> None:
        super().__init__()
        self.ratio = src / dst
        steps = round(math.log2(self.ratio)) if self.ratio != 1 else 0
        layers: list[nn.Module] = []
        ch = in_ch
        for i in range(max(steps, 0)):
            nxt = max(in_ch // 2 ** (i + 1), out_ch // 2, 16)
            layers.append(nn.ConvTranspose2d(ch, nxt, 2, stride=2))
            if i < steps - 1:
                layers += [LayerNorm2d(nxt), nn.GELU()]
            ch = nxt
        layers += [nn.MaxPool2d(2, 2)] * max(-steps, 0)
        layers += [
            nn.Conv2d(ch, out_ch, 1, bias=False),
            LayerNorm2d(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            LayerNorm2d(out_ch),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (max(1, round(h * self.ratio)), max(1, round(w * self.ratio)))
        y = self.body(x)
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class Neck(nn.Module):
    """pyramid (list of (B, C_i, H/s_i, W/s_i), strides ``in_strides``) -> list of (B, C'_j, H/t_j, W/t_j) for
    ``out_strides`` t_j. ``out_channels`` lists C'_j (native channels for passed-through levels)."""

    def __init__(
        self, in_channels: Sequence[int], in_strides: Sequence[int], out_strides: Sequence[int], channels: int = 256
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError(f"neck: {len(in_channels)} channel counts for {len(in_strides)} strides")
        self.in_strides = list(in_strides)
        self.out_strides = list(out_strides)
        self.sources: list[int] = []
        self.branches = nn.ModuleDict()
        self.out_channels: list[int] = []
        pyramid = len(self.in_strides) > 1  # a single ViT grid is projected at every level, 1x included
        for t in out_strides:
            if pyramid and t in self.in_strides:  # native level of a real pyramid: pass through
                src = self.in_strides.index(t)
                self.out_channels.append(int(in_channels[src]))
            else:  # build from the level of nearest stride (the last one, for a ViT)
                src = min(range(len(in_strides)), key=lambda i: (abs(math.log2(in_strides[i] / t)), -i))
                self.branches[str(t)] = _Resample(int(in_channels[src]), channels, int(in_strides[src]), int(t))
                self.out_channels.append(channels)
            self.sources.append(src)

    @property
    def trainable(self) -> bool:
        """False when every requested level is passed through (a ResNet), so there is nothing to learn."""
        return len(self.branches) > 0

    def forward(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t, src in zip(self.out_strides, self.sources, strict=True):
            x = pyramid[src]
            out.append(self.branches[str(t)](x) if str(t) in self.branches else x)
        return out


def neck_for(backbone: nn.Module, out_strides: Sequence[int], channels: int = 256) -> Neck:
    """The neck adapting ``backbone`` (a cxrbench Backbone) to ``out_strides``."""
    return Neck(backbone.pyramid_channels, backbone.pyramid_strides, out_strides, channels)
