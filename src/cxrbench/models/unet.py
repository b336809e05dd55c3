"""U-Net decoder over any feature pyramid, built from segmentation_models_pytorch's ``UnetDecoderBlock``.

The deepest level (stride S, e.g. 32) is upsampled by 2 in each of ``log2(S)`` blocks until stride 1 (input
resolution). Block i concatenates the pyramid level at its output stride when the pyramid has one (ResNet: strides
16, 8, 4, 2; a ViT through the neck: 16, 8, 4) and otherwise upsamples without a skip. A 3x3 convolution maps the
last block (``decoder_channels[-1]`` channels) to ``num_classes`` logits. With decoder channels (256, 128, 64, 32, 16)
over a ResNet-50 pyramid this is the MGCA/G2D U-Net (smp ``Unet`` decoder + segmentation head).

G2D's pretraining decoder is meant to be this class, so the "encoder-decoder" segmentation setting can load its
state dict (keys ``blocks.<i>.*`` and ``head.*``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
from torch import nn

REFERENCE_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class UNetDecoder(nn.Module):
    """pyramid [(B, C_i, H/s_i, W/s_i)] (strides ascending, deepest last) -> logits (B, num_classes, H, W)."""

    def __init__(
        self,
        pyramid_channels: Sequence[int],
        pyramid_strides: Sequence[int],
        decoder_channels: Sequence[int] = REFERENCE_DECODER_CHANNELS,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.strides = [int(s) for s in pyramid_strides]
        deepest = self.strides[-1]
        n_blocks = round(math.log2(deepest))
        if 2**n_blocks != deepest or n_blocks != len(decoder_channels):
            raise ValueError(
                f"U-Net: deepest pyramid stride {deepest} needs log2({deepest}) decoder blocks, "
                f"got decoder_channels {tuple(decoder_channels)} ({len(decoder_channels)} blocks)"
            )
        self.skip_index: list[int | None] = []
        blocks = []
        in_ch = int(pyramid_channels[-1])
        for i, out_ch in enumerate(decoder_channels):
            stride = deepest // 2 ** (i + 1)
            skip = self.strides.index(stride) if stride in self.strides[:-1] else None
            skip_ch = int(pyramid_channels[skip]) if skip is not None else 0
            blocks.append(UnetDecoderBlock(in_ch, skip_ch, int(out_ch)))
            self.skip_index.append(skip)
            in_ch = int(out_ch)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, 3, padding=1)

    def forward(self, pyramid: Sequence[torch.Tensor], out_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = pyramid[-1]
        h, w = x.shape[-2:]
        for i, (block, skip) in enumerate(zip(self.blocks, self.skip_index, strict=True)):
            skip_x = pyramid[skip] if skip is not None else None
            size = skip_x.shape[-2:] if skip_x is not None else (h * 2 ** (i + 1), w * 2 ** (i + 1))
            x = block(x, int(size[0]), int(size[1]), skip_x)
        logits = self.head(x)
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits
