"""A published / user-provided checkpoint evaluated through the same downstream matrix: "pretraining" = loading.

``pretrain.methods.external.checkpoint`` points at one of:

- a cxrbench checkpoint directory or its ``encoder.pt`` (backbone name, kwargs, normalisation travel with it);
- a Hugging Face model directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), e.g. RAD-DINO
  (``microsoft/rad-dino``) or DINOv2 saved locally -> ``backbone: vit_base_patch14``;
- a weight file (``.pt``/``.pth``/``.bin``/``.safetensors``): a ResNet-50 encoder state dict (torchvision keys, any
  ``module.``/``encoder.``/``model.`` prefix; e.g. a G2D / M-FLAG image encoder) -> ``backbone: resnet50``, or a
  DINOv2 / timm ViT state dict -> ``backbone: vit_base_patch14``.

For the last two, ``backbone``, ``image_size`` and ``normalize`` say how to build and feed it.

The input recipe (``cxrbench.data.recipes``: ``image_size``, ``normalize``, ``input`` {resize, crop, scale}) comes,
lowest first, from: the defaults (``longer`` / ``none`` / ``unit``), the checkpoint (a cxrbench encoder.pt's recorded
recipe, whose size and normalisation always travel with it; a Hugging Face directory's ``preprocessor_config.json``
when present, read by ``recipes.from_hf_preprocessor``: microsoft/rad-dino's gives 518, shorter side, centre crop,
mean 0.5307, std 0.2583), then the entry's own keys (an explicit value wins). RAD-DINO's min-max scaling of its
training images is not in that file (model card, "Preprocessing"): its entry sets ``input: {scale: minmax}``.

Several named entries can use this method in one matrix, each with its own checkpoint and published row, e.g.
``rad_dino_hf: {method: external, checkpoint: data/weights/rad-dino, backbone: vit_base_patch14, input: {scale:
minmax}}`` beside ``dinov2_base: {method: external, checkpoint: data/weights/dinov2-base, ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxrbench.methods._base import Method
from cxrbench.methods.random import EncoderOnly
from cxrbench.registry import METHODS

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _missing(path: Any) -> FileNotFoundError:
    return FileNotFoundError(
        f"pretrain.methods.external.checkpoint = {str(path)!r} does not exist. Provide a local checkpoint and set "
        "that parameter: a cxrbench checkpoint dir / encoder.pt, a Hugging Face model dir (e.g. microsoft/rad-dino "
        "saved with `hf download microsoft/rad-dino --local-dir <dir>`), or a ResNet-50 / ViT state dict file "
        "(with pretrain.methods.external.backbone = resnet50 | vit_base_patch14). Nothing is downloaded at run time."
    )


def resolve_weights(path: Path) -> tuple[str, Path]:
    """-> ("cxrbench", encoder.pt) or ("weights", weight file) for a checkpoint path (file or directory)."""
    if path.is_dir():
        if (path / "encoder.pt").is_file():
            return "cxrbench", path / "encoder.pt"
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return "weights", path / name
        raise FileNotFoundError(
            f"{path}: directory has neither encoder.pt (cxrbench) nor {' / '.join(HF_WEIGHT_FILES)} (Hugging Face)"
        )
    if not path.is_file():
        raise _missing(path)
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, dict) and "backbone" in obj and "state_dict" in obj:
            return "cxrbench", path
    return "weights", path


def load_cxrbench_encoder(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """encoder.pt -> (backbone with its weights, the encoder.pt dict without the state)."""
    from cxrbench.models.backbones import build_backbone

    enc = torch.load(path, map_location="cpu", weights_only=False)
    bb = build_backbone(enc["backbone"]["name"], **enc["backbone"]["kwargs"])
    bb.load_state_dict(enc["state_dict"])
    return bb, {k: v for k, v in enc.items() if k != "state_dict"}


def checkpoint_recipe(kind: str, file: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe keys a checkpoint carries: a cxrbench encoder.pt's ``image_size`` / ``normalize`` / ``input``, a
    Hugging Face directory's ``preprocessor_config.json`` (:func:`cxrbench.data.recipes.from_hf_preprocessor`), or
    nothing (a bare weight file)."""
    from cxrbench.data.recipes import HF_PREPROCESSOR, from_hf_preprocessor

    if kind == "cxrbench" and meta is not None:
        return {"image_size": meta["image_size"], "normalize": dict(meta["normalize"]),
                "input": dict(meta.get("input") or {})}
    processor = file.parent / HF_PREPROCESSOR
    return from_hf_preprocessor(processor) if processor.is_file() else {}


def entry_recipe(params: dict[str, Any], found: dict[str, Any], file: Path,
                 recorded: bool = False) -> tuple[int, dict[str, Any]]:
    """(image_size, the recorded normalize + input mapping): the entry's explicit keys over the checkpoint's; a
    cxrbench encoder.pt (``recorded``) keeps its own size and normalisation (they travel with it)."""
    from cxrbench.methods._common import normalization

    explicit = {k: params[k] for k in ("image_size", "normalize") if k in params and not recorded}
    merged = {**found, **explicit,
              "input": {**dict(found.get("input") or {}), **dict(params.get("input") or {})}}
    for key in ("image_size", "normalize"):
        if key not in merged:
            raise KeyError(f"pretrain.methods.external.{key} is needed to use the weight file {file} (it has no "
                           "preprocessor_config.json or recorded recipe)")
    return int(merged["image_size"]), normalization(merged, merged["normalize"])


@METHODS.register("external")
class External(Method):
    """params: checkpoint (path), backbone + backbone_kwargs, image_size, normalize {mean, std}, input {resize, crop,
    scale} (the last three default to what the checkpoint records, module docstring)."""

    name = "external"

    def trains(self) -> bool:
        return False

    def build(self, *, corpus=None) -> EncoderOnly:
        p = self.params
        if not p.get("checkpoint"):
            raise _missing(p.get("checkpoint"))
        kind, file = resolve_weights(Path(p["checkpoint"]))
        if kind == "cxrbench":
            bb, meta = load_cxrbench_encoder(file)
            return EncoderOnly(bb, *entry_recipe(p, checkpoint_recipe(kind, file, meta), file, recorded=True))
        from cxrbench.models.backbones import build_backbone

        if "backbone" not in p:
            raise KeyError(f"pretrain.methods.external.backbone is needed to use the weight file {file}")
        size, recipe = entry_recipe(p, checkpoint_recipe(kind, file), file)
        bb = build_backbone(p["backbone"], weights=str(file), **dict(p.get("backbone_kwargs") or {}))
        return EncoderOnly(bb, size, recipe)
