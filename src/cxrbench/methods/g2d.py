"""G2D: global-to-dense vision-language pretraining (Liu et al., NeurIPS 2024).

Image: backbone + U-Net decoder (``cxrbench.models.unet.UNetDecoder``, 1 logit map at input resolution); visual
projector on the last feature map (1x1 conv -> BN (no affine) -> ReLU -> 1x1 conv) then CLIP-style attention pooling
whose only query is the mean token. Text: a transformers encoder + per-token projector; the embedding is the
projected [CLS]. Loss = symmetric InfoNCE (tau 0.07) + pseudo-segmentation loss on pseudo-masks made from the pooling
attention (``pseudo_mask.pseudo_masks``, no gradient); the first ``warmup_global_steps`` optimiser steps use the
global loss alone.

Explicit parameters (a preset sets them; absent keys take the PAPER value):

- ``infonce_reduction``: ``mean`` of the two directions (paper) | ``sum`` (code: ``PRETRAIN/utils/loss.py``
  ``clip_loss``);
- ``seg_loss``: ``{dice_on_logits, dice_smooth, dice_weight, bce_weight}`` (paper ``false, 1.0, 0.5, 0.5``; code
  ``true, 1e-5, 1.0, 0.2``, ``bceDiceLoss``), see :func:`cxrbench.losses.pseudo_seg_loss`;
- ``pseudo_mask``: ``{percentile, aggregate, body_mask, smooth, inclusive, threshold, ...}`` (paper ``85, mean, true,
  true, true, percentile``; code ``85, mean, false, false, false, percentile``), see :func:`pseudo_mask.pseudo_masks`;
- ``warmup_global_steps``: paper 0, code 200 (``PRETRAIN/utils/trainer.py``: ``if self.global_step < 200``);
- ``normalize``: ``{mean, std}`` of the network input (paper: intensities in [0, 1]);
- the decoder's target, for G2D Table 5's "decoder loss" rows and Table 8: ``decoder_target: pseudo_mask`` (G2D),
  ``image`` (reconstruction: mean squared error between sigmoid(logits) and the [0, 1] view) or ``none`` (no dense
  loss: the decoder is built but untrained); ``shuffle_pseudo_masks: true`` pairs each image with the pseudo-mask
  of the next image in the batch (rolled by one: masks that do not belong to their image).

Heads: the paper says 3 attention heads, impossible with an embedding of 128 (128 is not divisible by 3); we keep the
released code's 4 (``heads`` parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.engine.dist import gather_with_grad
from cxrbench.losses import pseudo_seg_loss, symmetric_infonce
from cxrbench.losses.infonce import REDUCTIONS
from cxrbench.methods._base import Method
from cxrbench.methods._common import (
    UNIT,
    ImageInput,
    StepCounter,
    batch_images,
    build_encoder,
    build_text,
    normalization,
    require,
    seeded,
)
from cxrbench.methods.pseudo_mask import pseudo_masks
from cxrbench.models.text import pool_tokens
from cxrbench.registry import METHODS

SEG_LOSS_PAPER = {"dice_on_logits": False, "dice_smooth": 1.0, "dice_weight": 0.5, "bce_weight": 0.5}
PSEUDO_MASK_PAPER = {"percentile": 85.0, "aggregate": "mean", "body_mask": True, "smooth": True, "inclusive": True}
DECODER_TARGETS = ("pseudo_mask", "image", "none")
PSEUDO_MASK_OPTIONAL = ("threshold", "body_resolution", "bilateral_diameter", "sigma_space", "sigma_color")


def section(
    p: dict[str, Any], key: str, defaults: dict[str, Any], name: str, optional: Sequence[str] = ()
) -> dict[str, Any]:
    """``p[key]`` (a mapping) over ``defaults``; a key outside defaults + optional is an error naming it."""
    given = p.get(key) or {}
    if not isinstance(given, dict):
        raise ValueError(f"pretrain.methods.{name}.{key} must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(defaults) - set(optional))
    if unknown:
        raise ValueError(f"pretrain.methods.{name}.{key}: unknown key(s) {unknown}; "
                         f"expected {sorted(defaults) + sorted(optional)}")
    return {**defaults, **given}


def conv_projector(in_ch: int, dim: int, conv: type[nn.Module], bn: type[nn.Module]) -> nn.Sequential:
    """1x1 conv in->dim (no bias), BN (no affine), ReLU, 1x1 conv dim->dim (conv: Conv2d or Conv1d)."""
    return nn.Sequential(
        conv(in_ch, dim, 1, bias=False), bn(dim, affine=False), nn.ReLU(inplace=True), conv(dim, dim, 1)
    )


class AttentionPool(nn.Module):
    """CLIP-style attention pooling with the mean token as the only query.

    x: (B, C, h, w) -> pooled (B, C_out), attn (B, heads, h*w), dense (B, C_out, h, w).
    tokens = [mean; patches] + pos; a = softmax(q(t_0) k(t)^T / sqrt(C / heads)) per head over all 1 + hw tokens;
    pooled = proj(a v(t)). ``attn`` is a's patch part as it is (the mean-token key dropped, NOT renormalised: each
    head's patch weights sum to 1 - a_h0), as the released code (``PRETRAIN/models/cnn_ae.py``:
    ``AttentionPool2d.forward`` returns ``nn.MultiheadAttention(..., average_attn_weights=False)``'s weights and
    ``CNN_AE.forward`` keeps ``att_map[:, :, 1:]``), so the mean over heads weighs every head alike.
    ``dense`` = proj(v(t_patch)) per position, in the pooled vector's space (what zero-shot grounding compares
    with text)."""

    def __init__(self, dim: int, heads: int, grid: int, out_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"AttentionPool: dim {dim} is not divisible by heads {heads}")
        self.heads, self.grid = heads, grid
        self.pos = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, out_dim or dim)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos
        sp = self.pos[1:].t().reshape(1, -1, self.grid, self.grid)
        sp = F.interpolate(sp, size=(h, w), mode="bilinear", align_corners=False).flatten(2)[0].t()
        return torch.cat([self.pos[:1], sp])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, C, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = torch.cat([t.mean(1, keepdim=True), t], 1) + self._pos(h, w).to(t.dtype)
        dh = C // self.heads
        q = self.q(t[:, :1]).reshape(B, 1, self.heads, dh).transpose(1, 2)
        k = self.k(t).reshape(B, -1, self.heads, dh).transpose(1, 2)
        v = self.v(t).reshape(B, -1, self.heads, dh).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)  # (B, heads, 1, 1 + hw)
        pooled = self.proj((a @ v).transpose(1, 2).reshape(B, C))
        attn = a[:, :, 0, 1:]
        dense = self.proj(v[:, :, 1:].transpose(1, 2).reshape(B, h * w, C)).transpose(1, 2).reshape(B, -1, h, w)
        return pooled, attn, dense


class G2DModule(StepCounter):
    """What the engine trains. forward(batch {"image": (B, 1, S, S) in [0, 1], "text": list[str]}) ->
    {"loss", "loss_global", "loss_dense"}. Also the VisionLanguage protocol (embed_image / embed_text)."""

    def __init__(self, params: dict[str, Any], corpus: Sequence[str] | None, dense: bool) -> None:
        super().__init__()
        p, name = params, params.get("_name", "g2d")
        self.temperature = float(p.get("temperature", 0.07))
        self.infonce_reduction = str(p.get("infonce_reduction", "mean"))
        if self.infonce_reduction not in REDUCTIONS:
            raise ValueError(f"pretrain.methods.{name}.infonce_reduction must be one of {REDUCTIONS}, "
                             f"got {self.infonce_reduction!r}")
        # negatives from every process's batch under torchrun (the papers' global batch); the released G2D code: false
        self.gather_negatives = bool(p.get("gather_negatives", True))
        self.warmup_global_steps = int(p.get("warmup_global_steps", 0))
        self.decoder_target = str(p.get("decoder_target", "pseudo_mask"))
        if self.decoder_target not in DECODER_TARGETS:
            raise ValueError(f"pretrain.methods.{name}.decoder_target must be one of {DECODER_TARGETS}, "
                             f"got {self.decoder_target!r}")
        self.shuffle_pseudo_masks = bool(p.get("shuffle_pseudo_masks", False))
        self.dense = dense
        if dense:
            self.seg_loss_params = section(p, "seg_loss", SEG_LOSS_PAPER, name)
            self.pseudo_mask_params = section(p, "pseudo_mask", PSEUDO_MASK_PAPER, name, PSEUDO_MASK_OPTIONAL)
        image_size = int(require(p, "image_size", name))
        self.input = ImageInput(image_size, normalization(p, UNIT), p.get("augment"), int(p.get("seed", 0)))
        dim = int(p.get("embed_dim", 128))
        self.encoder = build_encoder(p, name)
        stride = self.encoder.pyramid_strides[-1]
        self.visual_projector = conv_projector(self.encoder.pyramid_channels[-1], dim, nn.Conv2d, nn.BatchNorm2d)
        self.pool = AttentionPool(dim, int(p.get("heads", 4)), max(1, image_size // stride))
        self.text = build_text(p, name, corpus)
        self.text_projector = conv_projector(self.text.hidden_size, dim, nn.Conv1d, nn.BatchNorm1d)
        if dense:
            from cxrbench.models.unet import UNetDecoder

            self.decoder_kwargs = {
                "pyramid_channels": list(self.encoder.pyramid_channels),
                "pyramid_strides": list(self.encoder.pyramid_strides),
                "decoder_channels": list(p.get("decoder_channels", (256, 128, 64, 32, 16))),
            }
            self.decoder = UNetDecoder(**self.decoder_kwargs)

    def image_features(self, x: torch.Tensor):
        out = self.encoder(x)
        pooled, attn, dense = self.pool(self.visual_projector(out.pyramid[-1]))
        return out, pooled, attn, dense

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Every token projected (1x1 convs, BatchNorm over batch and tokens), then the report's vector under
        ``text.pooling``: the projected [CLS] (``cls``, the paper's and the released code's) or the mean of the
        real tokens' projections (``mean``)."""
        t = self.text(texts)
        proj = self.text_projector(t.tokens.transpose(1, 2))  # (B, D, L)
        return pool_tokens(proj.transpose(1, 2), t.attention_mask, t.pooling)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        view, x = self.input(batch_images(batch, self), self.step, batch.get("row"))
        out, img, attn, _ = self.image_features(x)
        txt = self.text_features(list(batch["text"]))
        if self.gather_negatives:  # (world_size * B, D): one process with the global batch, gradients included
            img, txt = gather_with_grad(img), gather_with_grad(txt)
        loss_g = symmetric_infonce(img, txt, temperature=self.temperature, reduction=self.infonce_reduction)
        result = {"loss_global": loss_g.detach()}
        loss = loss_g
        if self.dense and self.decoder_target != "none" and self.step >= self.warmup_global_steps:
            logits = self.decoder(out.pyramid, out_size=tuple(x.shape[-2:]))
            loss_d = self.dense_loss(logits, attn, view)
            loss = loss + loss_d
            result["loss_dense"] = loss_d.detach()
        result["loss"] = loss
        return result

    def dense_loss(self, logits: torch.Tensor, attn: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, S, S); attn (B, heads, hw); view (B, 1, S, S) in [0, 1] -> the decoder's loss."""
        if self.decoder_target == "image":
            return F.mse_loss(torch.sigmoid(logits), view.mean(1, keepdim=True).to(logits.dtype))
        target = self.targets(attn, view)
        return pseudo_seg_loss(logits, target, **self.seg_loss_params)

    def targets(self, attn: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The pseudo-masks (B, 1, S, S) of a batch (no gradient), rolled by one image when shuffled."""
        target = pseudo_masks(attn.detach(), view, **self.pseudo_mask_params)
        return target.roll(1, dims=0) if self.shuffle_pseudo_masks else target

    @torch.no_grad()
    def pretrain_examples(self, images: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """For the report's gallery, in eval mode: images (k, 1, S, S) in [0, 1] -> image (k, S, S) the view,
        attention (k, h, w) the head-mean map the pseudo-mask is thresholded from, pseudo_mask (k, S, S),
        prediction (k, S, S) the decoder's probabilities; None without the dense branch (ConVIRT)."""
        if not self.dense:
            return None
        was = self.training
        self.eval()
        view, x = self.input(images.to(next(self.parameters()).device).float())
        out, _, attn, _ = self.image_features(x)
        side = int(round(attn.shape[-1] ** 0.5))
        masks = self.targets(attn, view)
        prob = torch.sigmoid(self.decoder(out.pyramid, out_size=tuple(x.shape[-2:])))
        self.train(was)
        return {"image": view[:, 0], "attention": attn.mean(1).reshape(-1, side, side), "pseudo_mask": masks[:, 0],
                "prediction": prob[:, 0]}

    # ---- VisionLanguage protocol (zero-shot tasks); call in eval mode
    def embed_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) normalised as encoder.pt says -> (global (B, D), dense (B, D, h, w)), L2-normalised."""
        _, pooled, _, dense = self.image_features(x)
        return F.normalize(pooled, dim=-1), F.normalize(dense, dim=1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_features(list(texts)), dim=-1)

    def full_state(self) -> dict[str, Any] | None:
        """The encoder-decoder for the "encoder-decoder" segmentation setting (UNetDecoder(**decoder_kwargs))."""
        if not self.dense:
            return None
        return {"encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(),
                "decoder_kwargs": self.decoder_kwargs}


@METHODS.register("g2d")
class G2D(Method):
    """params: see G2DModule / the module docstring (explicit values; a preset chooses paper or code ones)."""

    name = "g2d"
    has_text = True
    has_decoder = True
    dense = True

    def build(self, *, corpus: Sequence[str] | None = None) -> G2DModule:
        if "dice_smooth" in self.params:
            raise ValueError(f"pretrain.methods.{self.name}.dice_smooth: replaced by seg_loss.dice_smooth")
        with seeded(int(self.params.get("seed", 0))):
            return G2DModule({**self.params, "_name": self.name}, corpus, dense=self.dense)
