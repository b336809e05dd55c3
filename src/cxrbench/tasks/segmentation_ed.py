"""Semantic segmentation, "encoder-decoder" setting: the whole U-Net starts from the method's pretrained
encoder-decoder (G2D's pseudo-segmentation decoder), as in G2D Table 1's "G2D (encoder-decoder)" rows.

A separate registered task (rather than a parameter of ``segmentation``) so that both settings sit side by side in
one matrix and one table; methods without a pretrained decoder record "not applicable" with the reason.
"""

from __future__ import annotations

from typing import Any

from cxrbench.registry import TASKS
from cxrbench.tasks.segmentation import Segmentation


@TASKS.register("segmentation_ed")
class SegmentationEncoderDecoder(Segmentation):
    name = "segmentation_ed"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__({**params, "setting": "encoder_decoder"})
