"""Random-initialisation baseline: the backbone as constructed with a seed, no training."""

from __future__ import annotations

from typing import Any

from cxrbench.methods._base import Method
from cxrbench.methods._common import StepCounter, build_encoder, normalization, require, seeded
from cxrbench.registry import METHODS


class EncoderOnly(StepCounter):
    """Holds an encoder to export; it is not trained (forward is an error)."""

    def __init__(self, encoder, image_size: int, normalize: dict[str, float]) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = int(image_size)
        self.normalize = normalize

    def forward(self, batch: dict[str, Any]):
        raise RuntimeError(f"{type(self).__name__}: this method does not train (Method.trains() is False)")


@METHODS.register("random")
class RandomInit(Method):
    """params: backbone, backbone_kwargs, image_size, normalize ({mean, std}, default 0 / 1), seed."""

    name = "random"

    def trains(self) -> bool:
        return False

    def build(self, *, corpus=None) -> EncoderOnly:
        p = self.params
        with seeded(int(p.get("seed", 0))):
            enc = build_encoder(p, self.name)
        return EncoderOnly(enc, require(p, "image_size", self.name), normalization(p, {"mean": 0.0, "std": 1.0}))
