"""Semantic segmentation with the encoder UPDATED: a copy of the pretrained encoder is fine-tuned together with a
fresh U-Net decoder, as in G2D Table 7's "segmentation (encoder updated)" rows (MedKLIP vs G2D), unlike Table 1's
frozen encoder.

A registered subclass of ``segmentation`` that sets ``encoder_trainable: true`` (as ``segmentation_ed`` sets its
setting), so both settings sit side by side in one matrix and one report. The encoder trains at its own learning
rate ``encoder_lr`` (null: the engine's lr, which the decoder always uses). Nothing frozen is cached here: the
encoder changes every step, and each run trains its own deep copy, so the runs of one evaluate job never see each
other's weights.

Official settings, read in MedKLIP's released fine-tuning code (G2D-NeurIPS24 releases pretraining only and points
to MedKLIP for this comparison): ``Sample_Finetuning_SIIMACR/I2_segmentation/configs/Res_train.yaml`` trains the
whole U-Net (``models/resunet.py`` ``ModelResUNet_ft``: ResNet-50 stem to layer3 as the encoder, one optimiser over
all parameters in ``train_res_ft.py`` ``main``) with AdamW lr 1e-5 and weight decay 0.02 (biases and norms
excluded, ``optim/optim_factory.py`` ``add_weight_decay``), batch 64, 224 px, a 50-epoch warm-up and the
Dice + BCE loss of ``utils.py`` ``DiceBCELoss``. The paper set takes the encoder lr (1e-5) and the input size from
there; the decoder keeps the MGCA loss and lr of the frozen setting, so the two Table 7 settings differ in the
encoder alone.
"""

from __future__ import annotations

from typing import Any

from cxrbench.registry import TASKS
from cxrbench.tasks.segmentation import Segmentation


@TASKS.register("segmentation_ft")
class SegmentationFinetuned(Segmentation):
    name = "segmentation_ft"
    relative_cost = 13

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__({**params, "encoder_trainable": True})
