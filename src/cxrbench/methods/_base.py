"""The contract of a pretraining method and of the checkpoint directory it leaves for the downstream tasks.

A method is a class registered with ``@METHODS.register(name)``, constructed with its resolved parameters
(``params["pretrain"]["methods"][name]`` merged over the shared defaults). It builds a :class:`PretrainModule` that
the one training engine (``cxrbench.engine.fit``) drives: ``module(batch)`` returns a dict of losses with ``"loss"``.

Checkpoint directory written by ``pretrain`` (``data/checkpoints/<method>/``), read back by :func:`load_pretrained`:

=================  ==========================================================================================
``encoder.pt``     ``{"method", "backbone": {"name", "kwargs"}, "state_dict", "image_size", "normalize": {"mean",
                   "std"}}`` - the image encoder alone, for frozen-encoder downstream use.
``model.pt``       ``{"method", "params", "state_dict"}`` - the full pretraining model (G2D's encoder-decoder, the
                   projectors and text tower), rebuilt through the registry.
``config.json``    the resolved parameters.
``params.json``    trainable vs total parameter counts.
=================  ==========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


class VisionLanguage(Protocol):
    """What zero-shot tasks need from a method with a text tower (all outputs in the shared embedding space)."""

    def embed_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> (global (B, D), dense (B, D, h, w)), both L2-normalised along D."""
        ...

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """texts -> (len(texts), D), L2-normalised."""
        ...


class PretrainModule(nn.Module):
    """What the engine trains. ``forward(batch) -> {"loss": scalar, ...named parts}``; ``encoder`` is the Backbone.

    Optional hooks the engine calls when present: ``on_step_end(step, total_steps)`` (EMA teachers, schedules of
    momentum/temperature), ``param_groups(lr, weight_decay)`` (layer-wise decay, frozen parts)."""

    encoder: nn.Module


class Method:
    name: ClassVar[str] = ""
    #: a text tower (zero-shot tasks need one)
    has_text: ClassVar[bool] = False
    #: a pretrained segmentation decoder in ``model.pt`` (the encoder-decoder segmentation setting needs one)
    has_decoder: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def build(self) -> PretrainModule:  # pragma: no cover - abstract
        raise NotImplementedError

    def trains(self) -> bool:
        """False for methods whose 'pretraining' is not training (random init, external checkpoint)."""
        return True


@dataclass
class Pretrained:
    """A pretrained encoder as the downstream tasks see it."""

    method: str
    backbone: nn.Module  # a cxrbench.models Backbone
    image_size: int
    normalize: dict[str, float]
    vl: VisionLanguage | None = None  # set for methods with a text tower
    full_state: dict[str, Any] | None = None  # e.g. G2D's decoder for the encoder-decoder segmentation setting
