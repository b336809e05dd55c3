"""Method recipes: each ``(method, variant)`` is a named preset of parameter values, each value with its source.

A variant is not a code path. ``variant: code`` means "start from the values of the released code", ``variant:
paper`` "start from the values the paper prints" (the default). The values are
resolved once, at the parameter boundary (:func:`cxrbench.config.method_params`), and written into the run's
resolved config; the library reads explicit keys only (``seg_loss.dice_on_logits``, ``pseudo_mask.inclusive``, ...).

Precedence, lowest first::

    preset of (method, variant)  <  pretrain.engine (shared by every method)  <  the method's own section

so an explicit user value always wins, and a value nobody set comes from the recipe. The demo sets its budget
(epochs, batch, lr, image size, small backbones and text tower) explicitly; the paper parameter set sets almost
nothing and gets the recipes whole.

Each entry is ``dotted.key: (value, source)``. ``source`` says where the value comes from: a file and name of the
official repository (``G2D-NeurIPS24``, ``M-FLAG-MICCAI2023``, ``facebookresearch/dinov2``), the paper, the
RAD-DINO model card, or "cxrbench" for the project's own choice where the source is silent (then the reason).
``docs/hyperparameters.md`` is generated from this table (:func:`markdown_table`; a test keeps it current).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Entry = tuple[Any, str]

G2D_CODE = "G2D-NeurIPS24"
MFLAG_CODE = "M-FLAG-MICCAI2023"
DINOV2 = "facebookresearch/dinov2 dinov2/configs/ssl_default_config.yaml"

_G2D_COMMON: dict[str, Entry] = {
    "backbone": ("resnet50", f"{G2D_CODE} PRETRAIN/config.yaml network.img_model (smp.Unet encoder_weights="
                             "'imagenet' in models/cnn_ae.py: give a local ImageNet file as backbone_kwargs.weights)"),
    "text.name_or_path": ("emilyalsentzer/Bio_ClinicalBERT", f"{G2D_CODE} PRETRAIN/config.yaml network.text_model"),
    "text.max_length": (256, f"{G2D_CODE} PRETRAIN/models/cnn_ae.py CNN_AE._tokenize (training: max_length=256)"),
    "text.freeze_layers": (9, f"{G2D_CODE} PRETRAIN/config.yaml network.free_layers (first 9 of 12 BERT layers)"),
    "text.pooling": ("cls", f"{G2D_CODE} PRETRAIN/models/cnn_ae.py CNN_AE.forward: proj_t on every token's last "
                            "hidden state, the report embedding is proj_text_emb[:, 0] (the [CLS] position)"),
    "embed_dim": (128, f"{G2D_CODE} PRETRAIN/config.yaml projection_head.projection_size"),
    "heads": (4, f"{G2D_CODE} PRETRAIN/config.yaml network.att_pool_head; the paper's 3 cannot divide 128"),
    "temperature": (0.07, f"{G2D_CODE} PRETRAIN/utils/loss.py clip_loss(temperature=0.07); paper: 0.07"),
    "input.resize": ("stretch", f"{G2D_CODE} ext_data.py: image cropped to its non-zero box, then "
                                "skimage.transform.resize(img, (resize, resize)) (aspect not kept)"),
    "input.scale": ("minmax", f"{G2D_CODE} ext_data.py: (img - img.min()) / (img.max() - img.min()) before the "
                              "resize"),
}

_G2D_DENSE_PAPER: dict[str, Entry] = {
    "decoder_channels": ([256, 128, 64, 32, 16], "paper: a standard U-Net decoder (smp.Unet's default channels)"),
    "warmup_global_steps": (0, "paper: total loss = global + dense from the start (no warm-up is described)"),
    "seg_loss.dice_on_logits": (False, "paper: soft Dice on the decoder's probabilities"),
    "seg_loss.dice_smooth": (1.0, "cxrbench: the paper gives no smoothing constant; 1 is the usual soft-Dice choice"),
    "seg_loss.dice_weight": (0.5, "paper: L_dense = 0.5 (Dice + BCE)"),
    "seg_loss.bce_weight": (0.5, "paper: L_dense = 0.5 (Dice + BCE)"),
    "pseudo_mask.percentile": (85.0, "paper: threshold at the 85th percentile (Table 5 best)"),
    "pseudo_mask.aggregate": ("mean", "paper: attention averaged over heads"),
    "pseudo_mask.body_mask": (True, "paper: map restricted to the body (histogram thresholding)"),
    "pseudo_mask.smooth": (True, "paper: bilateral smoothing of the mask edges"),
    "pseudo_mask.inclusive": (True, "paper: score >= threshold"),
}

_G2D_DENSE_CODE: dict[str, Entry] = {
    "decoder_channels": ([256, 128, 64, 32, 16], f"{G2D_CODE} PRETRAIN/models/cnn_ae.py smp.Unet default decoder"),
    "warmup_global_steps": (200, f"{G2D_CODE} PRETRAIN/utils/trainer.py Trainer.train_batch (global_step < 200)"),
    "seg_loss.dice_on_logits": (True, f"{G2D_CODE} PRETRAIN/utils/loss.py bceDiceLoss (Dice on raw logits)"),
    "seg_loss.dice_smooth": (1e-5, f"{G2D_CODE} PRETRAIN/utils/loss.py bceDiceLoss smooth = 1e-5"),
    "seg_loss.dice_weight": (1.0, f"{G2D_CODE} PRETRAIN/utils/loss.py bceDiceLoss: dice + 0.2 * bce"),
    "seg_loss.bce_weight": (0.2, f"{G2D_CODE} PRETRAIN/utils/loss.py bceDiceLoss: dice + 0.2 * bce"),
    "pseudo_mask.percentile": (85.0, f"{G2D_CODE} PRETRAIN/config.yaml trainer.quantil = 0.85"),
    "pseudo_mask.aggregate": ("mean", f"{G2D_CODE} PRETRAIN/utils/trainer.py transform_att2label (sum / 4 heads)"),
    "pseudo_mask.body_mask": (False, f"{G2D_CODE} PRETRAIN/utils/trainer.py transform_att2label (whole image)"),
    "pseudo_mask.smooth": (False, f"{G2D_CODE} PRETRAIN/utils/trainer.py transform_att2label (no smoothing)"),
    "pseudo_mask.inclusive": (False, f"{G2D_CODE} PRETRAIN/utils/trainer.py transform_att2label (> threshold)"),
}

_G2D_PAPER_RECIPE: dict[str, Entry] = {
    "image_size": (224, "paper: 224 x 224 random crops of 256 x 256 images"),
    "infonce_reduction": ("mean", "paper: the InfoNCE printed for one direction, averaged (mean of the two)"),
    "gather_negatives": (True, "paper form: negatives of the global batch (all GPUs)"),
    "normalize.mean": (0.0, "paper: intensities in [0, 1], no normalisation"),
    "normalize.std": (1.0, "paper: intensities in [0, 1], no normalisation"),
    "input.crop": ("none", "paper: 224 random crops of 256 images in training (augment.scale); no fixed crop"),
    "augment.scale": ([0.765625, 0.765625], "paper: random crop 224 of 256 (area fraction (224/256)^2)"),
    "augment.perspective": (0.2, "paper names random perspective without its strength; cxrbench: 0.2"),
    "augment.autocontrast": (0.5, "paper names auto-contrast; probability 0.5 as torchvision's RandomAutocontrast"),
    "engine.optimizer": ("adamw", "paper: AdamW"),
    "engine.lr": (2e-4, "paper: learning rate 2e-4"),
    "engine.weight_decay": (1e-8, "paper: weight decay 1e-8"),
    "engine.batch_size": (128, "paper: batch 128 per GPU on 16 GPUs"),
    "engine.epochs": (50, "paper: 50 epochs"),
    "engine.schedule": ("warmup_cosine", "paper: linear warm-up then cosine decay"),
    "engine.warmup_steps": (1000, "paper gives no warm-up length; cxrbench: 1000 optimiser steps"),
}

_G2D_CODE_RECIPE: dict[str, Entry] = {
    "image_size": (256, f"{G2D_CODE} PRETRAIN/config.yaml trainer.crop_img_size = 256 (CenterCrop(256))"),
    "infonce_reduction": ("sum", f"{G2D_CODE} PRETRAIN/utils/loss.py clip_loss returns loss_t + loss_i"),
    "gather_negatives": (False, f"{G2D_CODE} PRETRAIN/utils/trainer.py: clip_loss on each GPU's own batch"),
    "normalize.mean": (0.449, f"{G2D_CODE} PRETRAIN/utils/dataset.py ImageNet Normalize (grayscale mean of means)"),
    "normalize.std": (0.226, f"{G2D_CODE} PRETRAIN/utils/dataset.py ImageNet Normalize (grayscale mean of stds)"),
    "input.crop": ("center", f"{G2D_CODE} PRETRAIN/utils/dataset.py VLP_dataset.get_dataset: CenterCrop(256), train "
                             "and test"),
    "augment.degrees": (15.0, f"{G2D_CODE} PRETRAIN/utils/dataset.py RandomAffine(degrees=15, shear=15)"),
    "augment.shear": (15.0, f"{G2D_CODE} PRETRAIN/utils/dataset.py RandomAffine(degrees=15, shear=15)"),
    "augment.brightness": (0.2, f"{G2D_CODE} PRETRAIN/utils/dataset.py ColorJitter(brightness=0.2, contrast=0.2)"),
    "augment.contrast": (0.2, f"{G2D_CODE} PRETRAIN/utils/dataset.py ColorJitter(brightness=0.2, contrast=0.2)"),
    "engine.optimizer": ("adamw", f"{G2D_CODE} PRETRAIN/main.py torch.optim.AdamW(betas=(0.9, 0.999))"),
    "engine.lr": (2e-5, f"{G2D_CODE} PRETRAIN/config.yaml optimizer.params.lr"),
    "engine.weight_decay": (1e-8, f"{G2D_CODE} PRETRAIN/config.yaml optimizer.params.weight_decay"),
    "engine.batch_size": (64, f"{G2D_CODE} PRETRAIN/config.yaml trainer.batch_size (per GPU, 8 GPUs)"),
    "engine.epochs": (52, f"{G2D_CODE} PRETRAIN/utils/trainer.py train_process: range(0, max_epochs + 1), max 51"),
    "engine.schedule": ("cosine_restarts", f"{G2D_CODE} PRETRAIN/utils/trainer.py CosineAnnealingWarmRestarts"),
    "engine.restart_every": (200, f"{G2D_CODE} PRETRAIN/utils/trainer.py create_scheduler T_0=200"),
    "engine.min_lr": (1e-8, f"{G2D_CODE} PRETRAIN/utils/trainer.py create_scheduler eta_min=1e-8"),
    "engine.warmup_steps": (0, f"{G2D_CODE} PRETRAIN/utils/trainer.py: no lr warm-up"),
}

_MFLAG_COMMON: dict[str, Entry] = {
    "backbone": ("resnet50", f"{MFLAG_CODE} utils/utils_builder.py ResNet_CXRBert: resnet50(pretrained=True), "
                             "ImageNet: give a local file as backbone_kwargs.weights"),
    "image_size": (224, f"{MFLAG_CODE} utils/utils_dataset.py I_T_emb_dataset: RandomCrop(224)"),
    "text.name_or_path": ("microsoft/BiomedVLP-CXR-BERT-general",
                          f"{MFLAG_CODE} utils/utils_builder.py ResNet_CXRBert"),
    "text.max_length": (512, f"{MFLAG_CODE} utils/utils_builder.py ResNet_CXRBert._tokenize max_length=512"),
    "text.trust_remote_code": (True, f"{MFLAG_CODE} utils/utils_builder.py AutoModel(trust_remote_code=True)"),
    "text.pooling": ("cls", f"{MFLAG_CODE} utils/utils_builder.py ResNet_CXRBert.forward: proj_t(text_emb[:, 0]), "
                            "the last layer's [CLS]"),
    "proj_hidden": (2048, f"{MFLAG_CODE} utils/utils_builder.py ResNet_CXRBert.proj_v / proj_t"),
    "embed_dim": (1024, f"{MFLAG_CODE} utils/utils_builder.py proj_v / proj_t end at 1024 (config.yaml says 768)"),
    "off_diagonal_weight": (0.0051, f"{MFLAG_CODE} utils/utils_trainer.py trainer_wBert.orthogonal_loss"),
    "normalize.mean": (0.5, f"{MFLAG_CODE} utils/utils_dataset.py Normalize(mean=0.5, std=0.5)"),
    "normalize.std": (0.5, f"{MFLAG_CODE} utils/utils_dataset.py Normalize(mean=0.5, std=0.5)"),
    "input.resize": ("stretch", f"{MFLAG_CODE} ext_data.py: image cropped to its non-zero box, then "
                                "skimage.transform.resize(img, (resize, resize)) (aspect not kept)"),
    "input.crop": ("none", f"{MFLAG_CODE} utils/utils_dataset.py I_T_emb_dataset: RandomCrop(224) only (augmentation)"),
    "input.scale": ("minmax", f"{MFLAG_CODE} ext_data.py: (img - img.min()) / (img.max() - img.min())"),
    "augment.degrees": (90.0, f"{MFLAG_CODE} utils/utils_dataset.py RandomRotation(degrees=(0, 90)); "
                              "cxrbench draws from +-90"),
    "augment.perspective": (0.5, f"{MFLAG_CODE} utils/utils_dataset.py RandomPerspective(distortion_scale=0.5)"),
    "augment.autocontrast": (0.5, f"{MFLAG_CODE} utils/utils_dataset.py RandomAutocontrast(p=0.5)"),
    "engine.optimizer": ("adamw", f"{MFLAG_CODE} pretrain/main.py torch.optim.AdamW(betas=(0.9, 0.999))"),
    "engine.lr": (2e-5, f"{MFLAG_CODE} pretrain/config.yaml optimizer.params.lr"),
    "engine.weight_decay": (0.05, f"{MFLAG_CODE} pretrain/config.yaml optimizer.params.weight_decay"),
    "engine.batch_size": (512, f"{MFLAG_CODE} pretrain/config.yaml trainer.batch_size (per GPU)"),
    "engine.epochs": (51, f"{MFLAG_CODE} utils/utils_trainer.py train_w_TextEmb: range(0, max_epochs + 1), max 50"),
    "engine.schedule": ("cosine_restarts", f"{MFLAG_CODE} utils/utils_trainer.py CosineAnnealingWarmRestarts"),
    "engine.restart_every": (2083, f"{MFLAG_CODE} utils/utils_trainer.py T_0 = int(epochs * N // 4 // batch * 0.4): "
                                   "2083 for N = 213,384 MIMIC-CXR pairs; set it for your corpus"),
    "engine.min_lr": (1e-8, f"{MFLAG_CODE} utils/utils_trainer.py CosineAnnealingWarmRestarts eta_min=1e-8"),
    "engine.warmup_steps": (0, f"{MFLAG_CODE} utils/utils_trainer.py: no lr warm-up"),
}

_RADDINO: dict[str, Entry] = {
    "backbone": ("vit_base_patch14", "RAD-DINO model card: ViT-B/14 (DINOv2-base)"),
    "backbone_kwargs.img_size": (518, "RAD-DINO model card: 518 x 518 inputs"),
    "backbone_kwargs.drop_path_rate": (0.1, f"{DINOV2} student.drop_path_rate (vitb14 config)"),
    "crops.global_size": (518, "RAD-DINO model card / vitb14_cxr.yaml crops.global_crops_size"),
    "crops.local_size": (224, f"{DINOV2} crops.local_crops_size (cxrbench: 224 at 518 globals)"),
    "crops.n_local": (8, f"{DINOV2} crops.local_crops_number = 8"),
    "crops.global_scale": ([0.32, 1.0], f"{DINOV2} crops.global_crops_scale"),
    "crops.local_scale": ([0.05, 0.32], f"{DINOV2} crops.local_crops_scale"),
    "normalize.mean": (0.5307, "RAD-DINO model card image processor: mean 0.5307"),
    "normalize.std": (0.2583, "RAD-DINO model card image processor: std 0.2583"),
    "input.resize": ("shorter", "microsoft/rad-dino preprocessor_config.json (BitImageProcessor) size.shortest_edge "
                                "518; model card: DICOMs resized so the shorter side is 518"),
    "input.crop": ("center", "microsoft/rad-dino preprocessor_config.json do_center_crop, crop_size 518 x 518"),
    "input.scale": ("minmax", "RAD-DINO model card, Preprocessing: training DICOMs min-max scaled to [0, 255]"),
    "prototypes": (65536, f"{DINOV2} dino.head_n_prototypes; RAD-DINO dino_head.safetensors"),
    "head_hidden": (2048, f"{DINOV2} dino.head_hidden_dim"),
    "head_bottleneck": (256, f"{DINOV2} dino.head_bottleneck_dim"),
    "student_temp": (0.1, "facebookresearch/dinov2 dinov2/loss/dino_clstoken_loss.py student_temp=0.1"),
    "teacher_temp_start": (0.04, f"{DINOV2} teacher.warmup_teacher_temp"),
    "teacher_temp": (0.07, f"{DINOV2} teacher.teacher_temp"),
    "warmup_teacher_temp_steps": (37500, f"{DINOV2} teacher.warmup_teacher_temp_epochs = 30 x 1250 iterations"),
    "center_momentum": (0.9, "facebookresearch/dinov2 dinov2/loss/dino_clstoken_loss.py center_momentum=0.9"),
    "centering": ("centering", f"{DINOV2} train.centering"),
    "momentum_start": (0.992, f"{DINOV2} teacher.momentum_teacher = 0.992 (cosine to 1)"),
    "freeze_last_layer_steps": (1250, f"{DINOV2} optim.freeze_last_layer_epochs = 1 x 1250 iterations"),
    "mask_ratio": ([0.1, 0.5], f"{DINOV2} ibot.mask_ratio_min_max"),
    "mask_probability": (0.5, f"{DINOV2} ibot.mask_sample_probability"),
    "dino_weight": (1.0, f"{DINOV2} dino.loss_weight"),
    "ibot_weight": (1.0, f"{DINOV2} ibot.loss_weight"),
    "koleo_weight": (0.1, f"{DINOV2} dino.koleo_loss_weight"),
    "layer_decay": (0.9, f"{DINOV2} optim.layerwise_decay"),
    "engine.optimizer": ("adamw", f"{DINOV2} (AdamW)"),
    "engine.lr": (6.3e-3, f"{DINOV2} optim.base_lr 0.004 x sqrt(2560 / 1024) (64 GPUs x 40 images)"),
    "engine.min_lr": (1e-6, f"{DINOV2} optim.min_lr"),
    "engine.weight_decay": (0.04, f"{DINOV2} optim.weight_decay"),
    "engine.weight_decay_end": (0.4, f"{DINOV2} optim.weight_decay_end"),
    "engine.clip_norm": (3.0, f"{DINOV2} optim.clip_grad"),
    "engine.batch_size": (40, "RAD-DINO paper: 40 images per GPU on 64 A100s"),
    "engine.epochs": (1000, "cxrbench: a cap only; max_steps ends the run"),
    "engine.max_steps": (35000, "RAD-DINO model card: the released checkpoint is iteration 35,000"),
    "engine.schedule": ("warmup_cosine", f"{DINOV2} optim: linear warm-up then cosine"),
    "engine.warmup_steps": (12500, f"{DINOV2} optim.warmup_epochs = 10 x 1250 iterations"),
}

_RANDOM: dict[str, Entry] = {
    "backbone": ("resnet50", "G2D Table 1 'Random Init': the same ResNet-50, no pretraining"),
    "image_size": (224, "MGCA protocol: 224 px inputs"),
    "input.resize": ("longer", "MGCA protocol: longest side resized, aspect kept, zero padded (the store's geometry)"),
    "input.crop": ("none", "MGCA protocol: the padded square, no fixed crop"),
    "input.scale": ("unit", "MGCA protocol: intensities / 255"),
}


def _without(entries: Mapping[str, Entry], prefixes: tuple[str, ...]) -> dict[str, Entry]:
    return {k: v for k, v in entries.items() if not k.startswith(prefixes)}


_DENSE_KEYS = ("decoder_channels", "warmup_global_steps", "seg_loss.", "pseudo_mask.")

#: method -> variant -> dotted key -> (value, source)
PRESETS: dict[str, dict[str, dict[str, Entry]]] = {
    "g2d": {
        "paper": {**_G2D_COMMON, **_G2D_PAPER_RECIPE, **_G2D_DENSE_PAPER},
        "code": {**_G2D_COMMON, **_G2D_CODE_RECIPE, **_G2D_DENSE_CODE},
    },
    "convirt": {  # G2D without the dense branch: the same recipes less the decoder's keys
        "paper": _without({**_G2D_COMMON, **_G2D_PAPER_RECIPE}, _DENSE_KEYS),
        "code": _without({**_G2D_COMMON, **_G2D_CODE_RECIPE}, _DENSE_KEYS),
    },
    "mflag": {
        "paper": {**_MFLAG_COMMON, "orth_batch_size": (None, "M-FLAG paper: G = V^T V / B (the batch at hand)")},
        "code": {**_MFLAG_COMMON, "orth_batch_size": (512, f"{MFLAG_CODE} utils/utils_trainer.py divides by the "
                                                           "configured per-device batch size")},
    },
    "raddino": {"paper": _RADDINO},
    "random": {"paper": _RANDOM},
}

DEFAULT_VARIANT = "paper"


def unflatten(entries: Mapping[str, Entry]) -> dict[str, Any]:
    """``{"a.b": (v, src)}`` -> ``{"a": {"b": v}}`` (values deep-copied)."""
    out: dict[str, Any] = {}
    for dotted, (value, _) in entries.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


def variants(method: str) -> tuple[str, ...]:
    """The variants a registered method has presets for (none for methods without a published recipe)."""
    return tuple(PRESETS.get(method, {}))


def preset(method: str, variant: str | None) -> dict[str, Any]:
    """The nested parameter values of ``(method, variant)``; ``{}`` for a method without presets asked for its
    default. An unknown variant is an error naming the method and the variants it has."""
    table = PRESETS.get(method)
    chosen = variant or DEFAULT_VARIANT
    if not table:
        if variant not in (None, DEFAULT_VARIANT):
            raise KeyError(f"method {method!r} has no variants (asked for {variant!r})")
        return {}
    if chosen not in table:
        raise KeyError(f"method {method!r} has no variant {chosen!r}; it has {sorted(table)}")
    return unflatten(table[chosen])


def leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping as ``{"a.b": value}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(leaves(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def provenance(method: str, variant: str | None, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What the resolved config records about the recipe: its name and every preset key whose resolved value
    differs from the preset (the user's or the shared engine's explicit values)."""
    chosen = variant or DEFAULT_VARIANT
    table = PRESETS.get(method, {}).get(chosen, {})
    flat = leaves(resolved)
    changed = sorted(k for k, (v, _) in table.items() if k in flat and flat[k] != v)
    return {"name": f"{method}/{chosen}" if table else None, "overridden": changed}


def markdown_table() -> str:
    """``docs/hyperparameters.md``'s method part: one row per (method, variant, key)."""
    lines = ["| method | variant | key | value | source |", "|---|---|---|---|---|"]
    for method, table in PRESETS.items():
        for variant, entries in table.items():
            for key, (value, source) in entries.items():
                shown = "null" if value is None else str(value).replace("|", "/")
                lines.append(f"| {method} | {variant} | `{key}` | {shown} | {source} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m cxrbench.presets > the method part of docs/hyperparameters.md
    print(markdown_table(), end="")
