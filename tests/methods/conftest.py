"""Tiny demo-size parameters for every registered method (tests loop over METHODS.names())."""

import copy

import pytest
import torch

TEXT = {"name_or_path": "wordpiece-bert", "max_length": 24, "freeze_layers": 0, "vocab_size": 200,
        "hidden_size": 32, "num_layers": 1, "num_heads": 2}

TINY = {
    "g2d": {"variant": "paper", "backbone": "resnet18", "image_size": 32, "text": TEXT, "embed_dim": 16, "heads": 4,
            "warmup_global_steps": 0, "decoder_channels": [16, 16, 8, 8, 8],
            "augment": {"scale": [0.6, 1.0], "perspective": 0.05, "autocontrast": 0.5}},
    "convirt": {"variant": "paper", "backbone": "resnet18", "image_size": 32, "text": TEXT, "embed_dim": 16,
                "heads": 4},
    "mflag": {"backbone": "resnet18", "image_size": 32, "text": TEXT, "proj_hidden": 32, "embed_dim": 16,
              "augment": {"scale": [0.766, 0.766], "degrees": 10}},
    "raddino": {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32},
                "crops": {"global_size": 32, "local_size": 16, "n_local": 2}, "prototypes": 64, "head_hidden": 32,
                "head_bottleneck": 16, "freeze_last_layer_steps": 0, "warmup_teacher_temp_steps": 2},
    "random": {"backbone": "resnet18", "image_size": 32},
}

CORPUS = [
    "no acute cardiopulmonary process", "small left pleural effusion", "right lower lobe pneumonia",
    "cardiomegaly with mild pulmonary edema", "no pneumothorax", "stable appearance of the chest",
]


@pytest.fixture
def tiny_params():
    """name -> a fresh deep copy of the demo-size parameters."""
    return copy.deepcopy(TINY)


@pytest.fixture
def corpus():
    return list(CORPUS)


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 1, 32, 32, generator=g)
    return {"image": img, "text": CORPUS[:4]}
