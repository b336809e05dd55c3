"""M-FLAG: medical vision-language pretraining with a frozen language model and latent-space geometry
optimisation (Liu et al., MICCAI 2023).

Image: backbone, pooled feature V (no fc) -> projector Linear D->hidden, BN, ReLU, Linear hidden->embed, BN (no
affine). Text: a transformers encoder fully frozen (``freeze_layers="all"``: eval mode, no gradient), its last-layer
[CLS] -> trainable projector of the same shape. Loss = alignment mean(4 - 4 cos(z_v, z_t)) + orthogonality of the
raw V (``cxrbench.losses.mflag``). ``embed_dim``: the code builds 1024 (the released config says 768).
``orth_batch_size``: null divides the Gram matrix by the actual batch size B (paper); an int divides by that
configured per-device batch size like the released code (512: ``utils/utils_trainer.py``
``trainer_wBert.orthogonal_loss`` divides by ``self.train_batch_size``; its loader drops the last partial batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.losses import alignment_loss, orthogonality_loss
from cxrbench.methods._base import Method
from cxrbench.methods._common import (
    ImageInput,
    StepCounter,
    batch_images,
    build_encoder,
    build_text,
    normalization,
    require,
    seeded,
)
from cxrbench.registry import METHODS

HALF = {"mean": 0.5, "std": 0.5}  # Normalize(0.5, 0.5)


def mlp_projector(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear in->hidden, BN, ReLU, Linear hidden->out, BN (no affine). (B, in) -> (B, out)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out), nn.BatchNorm1d(out, affine=False),
    )


class MFLAGModule(StepCounter):
    """forward(batch {"image", "text"}) -> {"loss", "loss_align", "loss_orth"}; VisionLanguage protocol."""

    def __init__(self, params: dict[str, Any], corpus: Sequence[str] | None) -> None:
        super().__init__()
        p = params
        self.off_diagonal_weight = float(p.get("off_diagonal_weight", 0.0051))
        self.orth_batch_size = p.get("orth_batch_size")
        n = self.orth_batch_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"pretrain.methods.mflag.orth_batch_size must be null or a positive integer, got {n!r}")
        self.input = ImageInput(int(require(p, "image_size", "mflag")), normalization(p, HALF), p.get("augment"),
                                int(p.get("seed", 0)))
        hidden, dim = int(p.get("proj_hidden", 2048)), int(p.get("embed_dim", 1024))
        self.encoder = build_encoder(p, "mflag")
        self.visual_projector = mlp_projector(self.encoder.out_dim, hidden, dim)
        self.text = build_text(p, "mflag", corpus, freeze_layers="all")
        self.text_projector = mlp_projector(self.text.hidden_size, hidden, dim)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            pooled = self.text(texts).pooled()  # [CLS] (paper, released code) or the token mean: text.pooling
        return self.text_projector(pooled)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        _, x = self.input(batch_images(batch, self), self.step, batch.get("row"))
        v = self.encoder(x).pooled
        zv = self.visual_projector(v)
        zt = self.text_features(list(batch["text"]))
        align = alignment_loss(zv, zt)
        orth = orthogonality_loss(v, off_diagonal_weight=self.off_diagonal_weight, batch_size=self.orth_batch_size)
        return {"loss": align + orth, "loss_align": align.detach(), "loss_orth": orth.detach()}

    def embed_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (global (B, D), dense (B, D, h, w)): the projector (eval mode: per-channel affine BN)
        applied to the pooled vector and to every position of the last feature map."""
        out = self.encoder(x)
        fmap = out.pyramid[-1]
        B, C, h, w = fmap.shape
        dense = self.visual_projector(fmap.flatten(2).transpose(1, 2).reshape(B * h * w, C))
        dense = dense.reshape(B, h, w, -1).permute(0, 3, 1, 2)
        return F.normalize(self.visual_projector(out.pooled), dim=-1), F.normalize(dense, dim=1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_features(list(texts)), dim=-1)


@METHODS.register("mflag")
class MFLAG(Method):
    name = "mflag"
    has_text = True

    def build(self, *, corpus: Sequence[str] | None = None) -> MFLAGModule:
        with seeded(int(self.params.get("seed", 0))):
            return MFLAGModule(self.params, corpus)
