"""Pieces shared by the pretraining methods: seeded construction, backbone/text builders, input pipeline, counts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cxrbench.methods._augment import ViewAugment, ViewConfig, resize, to_input
from cxrbench.methods._base import PretrainModule

IMAGENET_GRAY = {"mean": 0.449, "std": 0.226}  # mean of ImageNet's channel means / stds (grayscale replicated)
UNIT = {"mean": 0.0, "std": 1.0}  # intensities kept in [0, 1]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global RNG for module construction (layer inits) and restore the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def require(params: dict[str, Any], key: str, method: str) -> Any:
    if key not in params:
        raise KeyError(f"pretrain.methods.{method}: missing parameter {key!r}")
    return params[key]


def build_encoder(params: dict[str, Any], method: str) -> nn.Module:
    """``params["backbone"]`` (a registered name) with ``params["backbone_kwargs"]`` (e.g. weights, img_size)."""
    from cxrbench.models.backbones import build_backbone

    return build_backbone(require(params, "backbone", method), **dict(params.get("backbone_kwargs") or {}))


def build_text(params: dict[str, Any], method: str, corpus: Sequence[str] | None, **overrides: Any) -> nn.Module:
    """``params["text"]``: {"name_or_path", "max_length", "freeze_layers", ... wordpiece-bert sizes}."""
    from cxrbench.models.text import build_text_encoder

    cfg = dict(require(params, "text", method))
    name = cfg.pop("name_or_path", None) or cfg.pop("name", None)
    if not name:
        raise KeyError(f"pretrain.methods.{method}.text: missing 'name_or_path' (e.g. 'minilm', 'wordpiece-bert')")
    cfg.update(overrides)
    cfg.setdefault("seed", int(params.get("seed", 0)))
    return build_text_encoder(name, corpus=corpus, **cfg)


def _number(v: Any) -> float | list[float]:
    return [float(x) for x in v] if isinstance(v, list | tuple) else float(v)


def normalization(params: dict[str, Any], default: dict[str, float]) -> dict[str, Any]:
    """The input recipe a method records (``cxrbench.data.recipes``): ``normalize`` {mean, std} (a number or one
    per channel) and the ``input`` block {resize, crop, scale} over its defaults (``longer``, ``none``, ``unit``).
    Exported into encoder.pt, so every downstream task feeds the encoder the same way."""
    from cxrbench.data.recipes import DEFAULT_INPUT, SCALES

    norm = params.get("normalize") or default
    extra = {**DEFAULT_INPUT, **dict(params.get("input") or {})}
    if extra["scale"] not in SCALES:
        raise ValueError(f"input.scale must be one of {SCALES}, got {extra['scale']!r}")
    return {"mean": _number(norm["mean"]), "std": _number(norm["std"]), **extra}


def recipe_region(x: torch.Tensor, recipe: dict[str, Any], content: torch.Tensor | None,
                  ids: torch.Tensor | None) -> torch.Tensor:
    """The recipe's region and scale of each pretraining image, back at the store size S, so the augmentations
    cut their views from what the released pipeline fed (``cxrbench.data.recipes.view``). x (B, 1, S, S);
    ``content`` (N, 4) the store's content boxes by row (:func:`attach_content`), ``ids`` (B,) the batch's rows;
    without them the whole square is the content. ``longer`` + ``unit``: x unchanged."""
    if recipe.get("resize", "longer") == "longer" and recipe.get("scale", "unit") == "unit":
        return x
    from cxrbench.data.recipes import Recipe, view

    boxes = content[ids.cpu().long()] if content is not None and ids is not None else None
    r = Recipe(size=int(x.shape[-1]), resize=recipe.get("resize", "longer"), crop=recipe.get("crop", "none"),
               scale=recipe.get("scale", "unit"))
    return view(x, r, boxes.to(x.device) if boxes is not None else None)


def attach_content(module: nn.Module, content: torch.Tensor) -> None:
    """Give a module's input pipeline (the module itself or its ``input``) the store's content boxes (N, 4) by row
    (``cxrbench.data.recipes.content_boxes``), for :func:`recipe_region`; the pretrain stage calls this."""
    for part in (module, getattr(module, "input", None)):
        if part is not None and hasattr(part, "content"):
            part.content = content


def check_input_size(size: int, x: torch.Tensor, where: str) -> None:
    """A recipe only downsamples the prepared store (``cxrbench.data.recipes.check_store``)."""
    if int(size) > int(x.shape[-1]):
        raise ValueError(f"{where}: the input size {size} is larger than the prepared store's {x.shape[-1]} px "
                         "(data.image_size); prepare the store at the largest input size of the matrix")


class ImageInput(nn.Module):
    """[0, 1] batch (B, 1, S, S) -> (view in [0, 1], normalised 3-channel network input). Training: a random view
    (own generator); eval: a resize to ``image_size``."""

    def __init__(self, image_size: int, normalize: dict[str, float], augment: dict[str, Any] | None, seed: int):
        super().__init__()
        self.image_size = int(image_size)
        self.normalize = normalize
        self.augment = ViewAugment(ViewConfig.from_params(augment, self.image_size), seed)
        self.content: torch.Tensor | None = None  # (N, 4) content boxes by store row (attach_content)

    def forward(self, x: torch.Tensor, step: int | None = None,
                ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``step``/``ids`` (optimiser step, dataset rows): views a pure function of (seed, step, row), resumable."""
        check_input_size(self.image_size, x, "pretraining input")
        x = recipe_region(x, self.normalize, self.content, ids)
        view = self.augment(x, step=step, ids=ids) if self.training else resize(x, self.image_size)
        return view, self.prepare(view)

    def prepare(self, view: torch.Tensor) -> torch.Tensor:
        """A view in [0, 1] (already scaled by the recipe) -> the normalised 3-channel network input."""
        if view.shape[1] == 3:
            view = view.mean(1, keepdim=True)
        return to_input(view, self.normalize["mean"], self.normalize["std"])


def batch_images(batch: dict[str, Any], module: nn.Module) -> torch.Tensor:
    """The batch's images on the module's device, float."""
    dev = next(module.parameters()).device
    return batch["image"].to(dev, non_blocking=True).float()


def count_parameters(module: nn.Module) -> dict[str, Any]:
    """Trainable vs total parameter counts; ``frozen_fraction`` = 1 - trainable / total (M-FLAG's "78% fewer")."""
    seen: set[int] = set()
    total = trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    frac = 1 - trainable / total if total else 0.0
    return {"total": total, "trainable": trainable, "frozen": total - trainable, "frozen_fraction": frac}


class StepCounter(PretrainModule):
    """A PretrainModule that knows the optimiser step (from ``on_step_end``) and saves it in its state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0

    def on_step_end(self, step: int, total_steps: int) -> None:
        """``step``: optimiser steps done so far (the engine calls this after step 1 with 1)."""
        self.step = int(step)

    def get_extra_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.step = int(state.get("step", 0))

    def export_backbone(self) -> nn.Module:
        """The backbone written to encoder.pt (RAD-DINO: the teacher)."""
        return self.encoder
