"""Registered image backbones: torchvision ResNets and timm ViTs behind the one :class:`Backbone` interface.

``build_backbone(name, **kwargs)`` constructs a randomly initialised backbone (nothing is ever downloaded);
the optional ``weights=<path>`` kwarg loads a local file in this package's, torchvision's, timm's, original
DINOv2's or Hugging Face DINOv2's key layout. Every backbone keeps ``self.config = {"name": name, **kwargs}``
(no ``weights``: a checkpoint's state dict supersedes the file) so ``build_backbone(**config)`` rebuilds it.

=====================  =========  ======  ==================================================
name                   out_dim    stride  notes
=====================  =========  ======  ==================================================
resnet18 / resnet50    512/2048   2..32   pyramid = stem(relu), layer1..layer4; pooled = GAP
vit_tiny_patch16       192        16      timm ``vit_tiny_patch16_224``
vit_small_patch16      384        16      timm ``vit_small_patch16_224``
vit_small_patch14      384        14      DINOv2 geometry (layer scale), ``vit_small_patch14_dinov2``
vit_base_patch14       768        14      DINOv2 geometry, RAD-DINO (518 px input -> 37 x 37 grid)
=====================  =========  ======  ==================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

from cxrbench.models._base import Backbone, BackboneOutput
from cxrbench.registry import BACKBONES


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """The backbone registered as ``name`` constructed with ``kwargs`` (e.g. ``img_size``, ``weights``)."""
    return BACKBONES.get(name)(name=name, **kwargs)


# ----------------------------------------------------------------------------------------------- weight files
#: weight files looked for, in order, when ``weights`` names a directory: a transformers ``save_pretrained``
#: directory (e.g. ``microsoft/rad-dino``, ``facebook/dinov2-base``), then RAD-DINO's DINOv2-format backbone.
DIRECTORY_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "backbone_compatible.safetensors")


def weights_file(path: str | Path) -> Path:
    """``path`` itself, or for a directory its first file named in :data:`DIRECTORY_WEIGHTS`."""
    path = Path(path)
    if path.is_dir():
        for name in DIRECTORY_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"weights directory {str(path)!r} holds none of {', '.join(DIRECTORY_WEIGHTS)}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a local weight file (``.safetensors`` or a torch pickle; a directory: see :func:`weights_file`) and
    unwrap common containers (``{"state_dict": ...}``, ``{"model": ...}``, ``{"teacher": ...}``).
    Missing file -> FileNotFoundError."""
    path = weights_file(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist. Nothing is downloaded at run time: put the "
            "weights (a state dict in torchvision/timm/DINOv2/Hugging Face layout, .pt/.pth/.bin/"
            ".safetensors) at that path "
            "or set the backbone's `weights` parameter to null for random initialisation."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _check_load(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: str, ignore: str) -> None:
    """load_state_dict failing with the missing / unexpected keys (keys matching ``ignore`` are dropped)."""
    sd = {k: v for k, v in sd.items() if not re.match(ignore, k)}
    res = module.load_state_dict(sd, strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise KeyError(
            f"weights file {path!r} does not match {type(module).__name__}: missing {res.missing_keys[:8]} "
            f"({len(res.missing_keys)}), unexpected {res.unexpected_keys[:8]} ({len(res.unexpected_keys)})"
        )


# ----------------------------------------------------------------------------------------------------- ResNet
class ResNetBackbone(Backbone):
    """torchvision ResNet without its classifier.
    pyramid: [stem (B, 64, H/2, W/2), layer1 (H/4), layer2 (H/8),
    layer3 (H/16), layer4 (B, C4, H/32, W/32)]; pooled (B, C4) = spatial mean of layer4."""

    def __init__(self, name: str, weights: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = {"name": name, **kwargs}  # no `weights`: a checkpoint's state dict supersedes the file
        self.weights_path = weights
        net = getattr(torchvision.models, name)(weights=None, **kwargs)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_dim = net.fc.in_features
        self.pyramid_channels = [64] + [_block_out(getattr(net, f"layer{i}")[-1]) for i in (1, 2, 3, 4)]
        self.pyramid_strides = [2, 4, 8, 16, 32]
        if weights:
            sd = _strip_prefixes(read_state_dict(weights), ("module.", "backbone.", "encoder.", "model."))
            _check_load(self, sd, weights, ignore=r"^fc\.")

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        if not torch.is_grad_enabled():  # frozen / inference passes: channels-last convolutions are ~1.5x faster on
            x = x.contiguous(memory_format=torch.channels_last)  # a CPU (oneDNN) and on a GPU; training: unchanged
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return BackboneOutput(pooled=f4.mean(dim=(2, 3)), pyramid=[stem, f1, f2, f3, f4])


def _block_out(block: torch.nn.Module) -> int:
    return int((block.bn3 if hasattr(block, "bn3") else block.bn2).num_features)


BACKBONES.register("resnet18")(ResNetBackbone)
BACKBONES.register("resnet50")(ResNetBackbone)


# -------------------------------------------------------------------------------------------------------- ViT
_TIMM_VIT = {
    "vit_tiny_patch16": ("vit_tiny_patch16_224", 224),
    "vit_small_patch16": ("vit_small_patch16_224", 224),
    "vit_small_patch14": ("vit_small_patch14_dinov2", 518),
    "vit_base_patch14": ("vit_base_patch14_dinov2", 518),
}

_HF_QKV = r"^encoder\.layer\.(\d+)\.attention\.(attention\.)?(query|key|value|[qkv]_proj)\.(\w+)$"
_HF_DINOV2 = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.(output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
]


def _from_hf_dinov2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys (transformers 4 ``attention.attention.query`` or 5
    ``attention.q_proj`` layout) -> timm/original DINOv2 keys, query/key/value concatenated into qkv."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.match(_HF_QKV, k)
        if m:
            qkv.setdefault(f"blocks.{m[1]}.attn.qkv.{m[4]}", {})[m[3][0]] = v
            continue
        for pat, rep in _HF_DINOV2:
            if re.match(pat, k):
                k = re.sub(pat, rep, k)
                break
        out[k] = v
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + M*M, D) position embedding (CLS first, a square M x M patch grid) -> (1, 1 + h*w, D) for grid
    (h, w), as transformers' ``Dinov2Model`` does (``Dinov2Embeddings.interpolate_pos_encoding``: bicubic,
    ``align_corners=False``, no antialiasing, computed in float32; unchanged on the native grid). timm's own
    resampling antialiases (another bicubic kernel), so DINOv2 / RAD-DINO weights would give other features
    at any input size but the native one."""
    m = int(round((pos.shape[1] - 1) ** 0.5))
    if (m, m) == tuple(grid):
        return pos
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
    patch = torch.nn.functional.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False)
    patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos[:, :1], patch], dim=1)


class ViTBackbone(Backbone):
    """timm ViT (pretrained=False, dynamic image size). For x (B, 3, H, W) (sides not divisible by the patch p
    are zero-padded below / right to the next multiple; H, W below are the padded sides):
    pooled = CLS token (B, D); tokens = patch tokens (B, N, D), N = (H/p)(W/p);
    pyramid = [tokens as (B, D, H/p, W/p)].

    ``forward(x, mask)`` with a boolean ``mask`` (B, H/p, W/p) or (B, N) replaces the masked patch embeddings
    with the learned ``mask_token`` before the position embedding (iBOT-style masked image modelling).
    Position embeddings follow :func:`resample_pos_embed` at any other grid, so weights from a transformers
    ``Dinov2Model`` directory or in DINOv2's own key names (RAD-DINO's ``backbone_compatible.safetensors``) give
    ``Dinov2Model``'s CLS and patch tokens (same layer scale, qkv, norms; no register tokens)."""

    def __init__(
        self,
        name: str,
        img_size: int | None = None,
        drop_path_rate: float = 0.0,
        weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        timm_name, default_size = _TIMM_VIT[name]
        img_size = img_size or default_size
        self.config = {"name": name, "img_size": img_size, "drop_path_rate": drop_path_rate, **kwargs}
        self.weights_path = weights
        import timm  # here, not at module level: every ResNet job would pay its import

        self.vit = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
            **kwargs,
        )
        if self.vit.num_prefix_tokens != 1 or self.vit.no_embed_class:
            raise ValueError(f"{name}: expected one CLS token with a position embedding (no register tokens)")
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.out_dim = int(self.vit.embed_dim)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, self.out_dim))
        self.pyramid_channels = [self.out_dim]
        self.pyramid_strides = [self.patch_size]
        if weights:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        sd = _strip_prefixes(
            read_state_dict(path), ("module.", "backbone.", "model.", "dinov2.", "encoder.", "vit.")
        )
        if any(k.startswith("encoder.layer.") for k in sd):
            sd = _from_hf_dinov2(sd)
        mask = sd.pop("mask_token", None)
        if mask is not None:
            self.mask_token.data.copy_(mask.reshape(1, -1))
        if "pos_embed" in sd and sd["pos_embed"].shape != self.vit.pos_embed.shape:
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], tuple(self.vit.patch_embed.grid_size))
        _check_load(self.vit, sd, path, ignore=r"^(head|fc_norm|pooler)\.")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> BackboneOutput:
        p = self.patch_size
        if mask is None and (x.shape[-2] % p or x.shape[-1] % p):
            # zero rows / columns below and right up to the next multiple of the patch: a downstream protocol's
            # size (256 px NIH fine-tuning) reaches a /14 ViT; prepared images are zero-padded there already
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        B, _, H, W = x.shape
        if H % p or W % p:
            raise ValueError(f"{self.config['name']}: masked input {H}x{W} is not divisible by the patch size {p}")
        v = self.vit
        t = v.patch_embed(x)  # (B, H/p, W/p, D) with dynamic_img_size
        if mask is not None:
            m = mask.reshape(B, H // p, W // p, 1).to(t.dtype)
            t = t * (1 - m) + self.mask_token.to(t.dtype) * m
        pos = resample_pos_embed(v.pos_embed, (H // p, W // p))
        t = torch.cat([v.cls_token.expand(B, -1, -1), t.reshape(B, -1, self.out_dim)], dim=1) + pos
        t = v.norm(v.blocks(v.norm_pre(v.patch_drop(v.pos_drop(t)))))
        tokens = t[:, v.num_prefix_tokens :]
        grid = tokens.transpose(1, 2).reshape(B, self.out_dim, H // p, W // p)
        return BackboneOutput(pooled=t[:, 0], pyramid=[grid], tokens=tokens)


for _name in _TIMM_VIT:
    BACKBONES.register(_name)(ViTBackbone)
