"""RAD-DINO: image-only DINOv2 continual pretraining of a ViT on chest X-rays (Perez-Garcia et al., 2024).

Student = ViT backbone + DINO head; teacher = EMA copy (momentum cosine 0.992 -> 1 through ``on_step_end``), never
receives gradients. Two global crops go to both networks, ``n_local`` local crops to the student only
(``_augment.MultiCrop``). Half of the student's global crops are block-masked (ratio 0.1-0.5, ``_augment.block_masks``).
Loss = dino_weight * DINO(CLS) + ibot_weight * iBOT(masked patches) + koleo_weight * KoLeo(student CLS tokens, per
global crop). Teacher targets: centred (momentum 0.9) and sharpened softmax with temperature warm-up 0.04 -> 0.07, or
Sinkhorn-Knopp (``centering: sinkhorn_knopp``). The head's last layer is frozen for ``freeze_last_layer_steps``.
``param_groups`` applies layer-wise lr decay (no weight decay on biases, norms, tokens). The exported encoder is the
teacher (``export: teacher``), as DINOv2 and RAD-DINO release.

Continual pretraining (RAD-DINO starts from DINOv2): ``backbone_kwargs.weights`` names a local transformers
``Dinov2Model`` directory (``facebook/dinov2-base``, ``microsoft/rad-dino``), a DINOv2-format file such as RAD-DINO's
``backbone_compatible.safetensors`` (or its directory); ``init_head`` names a DINOv2-format head file such as
RAD-DINO's ``dino_head.safetensors`` (in 768, hidden 2048, bottleneck 256, 65,536 prototypes). Student and teacher
both start from them. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.losses import (
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
    teacher_softmax_centered,
    update_center,
)
from cxrbench.methods._augment import MultiCrop, MultiCropConfig, batch_generator, block_masks, to_input
from cxrbench.methods._base import Method
from cxrbench.methods._common import (
    StepCounter,
    batch_images,
    build_encoder,
    check_input_size,
    normalization,
    recipe_region,
    seeded,
)
from cxrbench.registry import METHODS

RAD_DINO_NORM = {"mean": 0.5307, "std": 0.2583}


class DINOHead(nn.Module):
    """(N, D) -> (N, prototypes): 3-layer MLP D->hidden->hidden->bottleneck (GELU), L2-normalise, then a
    weight-normalised linear layer without bias, W = g * V / ||V|| per prototype row (DINOv2's
    ``dinov2/layers/dino_head.py``: ``weight_norm(nn.Linear(bottleneck, K, bias=False))``, g filled with 1 and
    trained). ``frozen_last`` detaches the last layer (g and V). Keys: ``mlp.{0,2,4}``, ``last`` (V, (K,
    bottleneck)), ``last_g`` (g, (K, 1))."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.Parameter(torch.randn(prototypes, bottleneck) / bottleneck**0.5)
        self.last_g = nn.Parameter(torch.ones(prototypes, 1))

    def forward(self, x: torch.Tensor, frozen_last: bool = False) -> torch.Tensor:
        v, g = (self.last.detach(), self.last_g.detach()) if frozen_last else (self.last, self.last_g)
        return F.linear(F.normalize(self.mlp(x), dim=-1), g * F.normalize(v, dim=-1))

    def load_dinov2(self, path: str | Path) -> None:
        """Load a DINOv2-format head file (RAD-DINO's ``dino_head.safetensors``: ``mlp.{0,2,4}.weight/bias`` and
        ``last_layer.weight_g`` / ``weight_v``, or their ``parametrizations.weight.original0/1`` form, or a plain
        ``last_layer.weight``). Shapes must match ``head_hidden``, ``head_bottleneck``, ``prototypes``."""
        from cxrbench.models.backbones import read_state_dict

        sd = {re.sub(r"^(module\.|dino_head\.|teacher\.|student\.)+", "", k): v
              for k, v in read_state_dict(path).items()}
        ours = {k: v for k, v in sd.items() if k.startswith("mlp.")}
        g = sd.get("last_layer.weight_g", sd.get("last_layer.parametrizations.weight.original0"))
        v = sd.get("last_layer.weight_v", sd.get("last_layer.parametrizations.weight.original1"))
        if v is None and "last_layer.weight" in sd:
            v = sd["last_layer.weight"]
            g = v.norm(dim=1, keepdim=True)
        if v is None:
            raise KeyError(f"{path}: no DINO head last layer (last_layer.weight_g/weight_v or last_layer.weight)")
        ours.update(last=v, last_g=g.reshape(-1, 1))
        for k, t in ours.items():
            mine = self.state_dict().get(k)
            if mine is None or mine.shape != t.shape:
                raise KeyError(f"{path}: head key {k!r} {tuple(t.shape)} does not fit this head "
                               f"({None if mine is None else tuple(mine.shape)}): check prototypes, head_hidden, "
                               "head_bottleneck")
        self.load_state_dict(ours, strict=True)


class RADDINOModule(StepCounter):
    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        seed = self.seed = int(p.get("seed", 0))
        self.w = {k: float(p.get(f"{k}_weight", d)) for k, d in (("dino", 1.0), ("ibot", 1.0), ("koleo", 0.1))}
        self.student_temp = float(p.get("student_temp", 0.1))
        self.teacher_temp = (float(p.get("teacher_temp_start", 0.04)), float(p.get("teacher_temp", 0.07)))
        self.teacher_temp_steps = int(p.get("warmup_teacher_temp_steps", 0))
        self.center_momentum = float(p.get("center_momentum", 0.9))
        self.centering = p.get("centering", "centering")
        self.momentum_start = float(p.get("momentum_start", 0.992))
        self.freeze_last_layer_steps = int(p.get("freeze_last_layer_steps", 0))
        self.mask_ratio = tuple(float(v) for v in p.get("mask_ratio", (0.1, 0.5)))
        self.mask_probability = float(p.get("mask_probability", 0.5))
        self.layer_decay = float(p.get("layer_decay", 0.9))
        self.export = p.get("export", "teacher")
        self.normalize = normalization(p, RAD_DINO_NORM)
        self.content: torch.Tensor | None = None  # (N, 4) content boxes by store row (attach_content)
        crops = dict(p.get("crops") or {})
        self.image_size = int(crops.get("global_size", p.get("image_size", 56)))
        crops["global_size"] = self.image_size
        for k in ("global_scale", "local_scale"):
            if k in crops:
                crops[k] = tuple(crops[k])
        self.multicrop = MultiCrop(MultiCropConfig(**crops), seed)
        self.encoder = build_encoder(p, "raddino")
        K = int(p.get("prototypes", 65536))
        hidden, bottleneck = int(p.get("head_hidden", 2048)), int(p.get("head_bottleneck", 256))
        self.head = DINOHead(self.encoder.out_dim, hidden, bottleneck, K)
        if p.get("init_head"):  # continual pretraining from a released DINOv2-format head (student and teacher)
            self.head.load_dinov2(p["init_head"])
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("dino_center", torch.zeros(1, K))
        self.register_buffer("ibot_center", torch.zeros(1, K))

    def train(self, mode: bool = True) -> RADDINOModule:
        super().train(mode)
        self.teacher_encoder.eval()  # the teacher never drops paths
        return self

    def export_backbone(self) -> nn.Module:
        return self.teacher_encoder if self.export == "teacher" else self.encoder

    def current_teacher_temp(self) -> float:
        start, end = self.teacher_temp
        if self.step >= self.teacher_temp_steps:
            return end
        return start + (end - start) * self.step / self.teacher_temp_steps

    def _targets(self, logits: torch.Tensor, center_name: str) -> torch.Tensor:
        temp = self.current_teacher_temp()
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature=temp)
        probs = teacher_softmax_centered(logits, getattr(self, center_name), temperature=temp)
        if self.training:  # collective when distributed: called on every process, also with no masked patch
            setattr(self, center_name, update_center(getattr(self, center_name), logits,
                                                     momentum=self.center_momentum))
        return probs

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch_images(batch, self)
        check_input_size(self.image_size, x, "pretrain.methods.raddino crops.global_size")
        B, m, s = x.shape[0], self.normalize["mean"], self.normalize["std"]
        ids = batch.get("row", torch.arange(B))  # crops and masks: pure functions of (seed, step, rows)
        x = recipe_region(x, self.normalize, self.content, batch.get("row"))  # RAD-DINO: shorter side, min-max
        globals_, locals_ = self.multicrop(x, step=self.step, ids=ids)
        g = to_input(torch.cat(globals_), m, s)
        p, gen = self.encoder.patch_size, batch_generator(self.seed, self.step, ids, stream=1)
        masks = block_masks(2 * B, g.shape[-2] // p, g.shape[-1] // p, ratio=self.mask_ratio,
                            probability=self.mask_probability, gen=gen)
        masks = masks[torch.randperm(2 * B, generator=gen)].to(x.device)  # which images: random
        with torch.no_grad():
            t_out = self.teacher_encoder(g)
            t_cls = self._targets(self.teacher_head(t_out.pooled), "dino_center")
            t_patch = self._targets(self.teacher_head(t_out.tokens[masks]), "ibot_center")
        frozen = self.step < self.freeze_last_layer_steps
        s_out = self.encoder(g, mask=masks)
        s_cls = [self.head(s_out.pooled, frozen)]
        if locals_:
            s_cls.append(self.head(self.encoder(to_input(torch.cat(locals_), m, s)).pooled, frozen))
        s_logits = torch.cat(s_cls).chunk(2 + len(locals_))
        dino = dino_loss(list(s_logits), list(t_cls.chunk(2)), student_temperature=self.student_temp)
        ibot = ibot_patch_loss(self.head(s_out.tokens[masks], frozen), t_patch, masks,
                               student_temperature=self.student_temp)
        koleo = sum(koleo_loss(c) for c in s_out.pooled.chunk(2))
        loss = self.w["dino"] * dino + self.w["ibot"] * ibot + self.w["koleo"] * koleo
        return {"loss": loss, "loss_dino": dino.detach(), "loss_ibot": ibot.detach(), "loss_koleo": koleo.detach()}

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA teacher update with momentum 1 - (1 - m0) (cos(pi step / total) + 1) / 2."""
        super().on_step_end(step, total_steps)
        mom = 1 - (1 - self.momentum_start) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2
        for student, teacher in ((self.encoder, self.teacher_encoder), (self.head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(mom).add_(ps.detach(), alpha=1 - mom)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Student parameters grouped by (lr scale, wd): lr * decay^(L + 1 - layer) with layer 0 = patch embedding
        and tokens, i + 1 = block i, L + 1 = final norm and head; no weight decay on biases, norms and tokens."""
        n_layers = len(self.encoder.vit.blocks)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        named = [(f"encoder.{n}", q) for n, q in self.encoder.named_parameters()]
        named += [(f"head.{n}", q) for n, q in self.head.named_parameters()]
        for name, q in named:
            if not q.requires_grad:
                continue
            blk = re.search(r"\.blocks\.(\d+)\.", name)
            if blk:
                layer = int(blk[1]) + 1
            elif re.search(r"patch_embed|cls_token|pos_embed|mask_token|reg_token", name):
                layer = 0
            else:
                layer = n_layers + 1
            no_wd = name.endswith(".bias") or "norm" in name or "token" in name or "pos_embed" in name
            key = (self.layer_decay ** (n_layers + 1 - layer), 0.0 if no_wd else 1.0)
            groups.setdefault(key, []).append(q)
        return [{"params": ps, "lr": lr * scale, "weight_decay": weight_decay * wd, "lr_scale": scale,
                 "wd_multiplier": wd} for (scale, wd), ps in sorted(groups.items())]


@METHODS.register("raddino")
class RADDINO(Method):
    name = "raddino"

    def build(self, *, corpus=None) -> RADDINOModule:
        with seeded(int(self.params.get("seed", 0))):
            return RADDINOModule(self.params)
