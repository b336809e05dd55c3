"""Semantic segmentation, "encoder-decoder" setting: the whole U-Net starts from the method's pretrained
encoder-decoder (G2D's pseudo-segmentation decoder), as in G2D Table 1's "G2D (encoder-decoder)" rows.

A separate registered task (rather than a parameter of ``segmentation``) so that both settings sit side by side in
one matrix and one table; methods without a pretrained decoder record "not applicable" with the reason (decided from
``Method.has_decoder`` before anything is loaded).

The encoder stays frozen, as in the frozen-encoder setting, so the two rows differ only in where the decoder starts.
The pretrained decoder starts from G2D's pseudo-mask predictions and needs the same epochs as a fresh one to adapt:
at 6 demo epochs its validation loss was still falling (Dice 0.22); at 12 it passed the frozen-encoder U-Net.
"""

from __future__ import annotations

from typing import Any

from cxrbench.registry import TASKS
from cxrbench.tasks.segmentation import Segmentation


@TASKS.register("segmentation_ed")
class SegmentationEncoderDecoder(Segmentation):
    name = "segmentation_ed"
    relative_cost = 8

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__({**params, "setting": "encoder_decoder"})
