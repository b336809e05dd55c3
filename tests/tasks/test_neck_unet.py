import pytest
import torch

from cxrbench.models.necks import Neck, neck_for
from cxrbench.models.unet import UNetDecoder
from cxrbench.tasks._common import FrozenEncoder, segmentation_strides


def test_neck_vit_grid_to_strides_8_16_32(tiny_vit):
    neck = neck_for(tiny_vit, (8, 16, 32), channels=10)
    out = neck(tiny_vit(torch.zeros(2, 3, 64, 64)).pyramid)
    assert [tuple(o.shape) for o in out] == [(2, 10, 8, 8), (2, 10, 4, 4), (2, 10, 2, 2)]
    assert neck.trainable and neck.out_channels == [10, 10, 10]


def test_neck_patch14_gets_exact_sizes():
    neck = Neck([6], [14], (4, 8, 16, 32), channels=5)
    out = neck([torch.zeros(1, 6, 16, 16)])  # a 224 input through patch 14
    assert [o.shape[-1] for o in out] == [56, 28, 14, 7]


def test_neck_resnet_passes_through_without_parameters(tiny_resnet):
    neck = neck_for(tiny_resnet, (8, 16, 32))
    pyr = tiny_resnet(torch.randn(1, 3, 64, 64)).pyramid
    out = neck(pyr)
    assert not neck.trainable and sum(p.numel() for p in neck.parameters()) == 0
    assert all(o is pyr[i] for o, i in zip(out, (2, 3, 4), strict=True))
    assert neck.out_channels == [8, 16, 16]


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_unet_output_resolution(family, tiny_resnet, tiny_vit):
    bb = tiny_resnet if family == "resnet" else tiny_vit
    strides = segmentation_strides(bb)
    assert strides == ((2, 4, 8, 16, 32) if family == "resnet" else (4, 8, 16, 32))
    enc = FrozenEncoder(bb, strides, channels=8)
    dec = UNetDecoder(enc.channels, strides, (16, 8, 8, 4, 4))
    _, pyr = enc(torch.randn(2, 3, 64, 64))
    assert tuple(dec(pyr).shape) == (2, 1, 64, 64)
    # skip connections where the pyramid has the stride; none at stride 1
    expect = [3, 2, 1, 0, None] if family == "resnet" else [2, 1, 0, None, None]
    assert dec.skip_index == expect


def test_unet_rejects_mismatched_depth():
    with pytest.raises(ValueError, match="log2"):
        UNetDecoder([4, 8], [16, 32], (8, 4, 4))


def test_frozen_encoder_stays_in_eval_and_frozen(tiny_resnet):
    enc = FrozenEncoder(tiny_resnet, (8, 16, 32)).train()
    assert not tiny_resnet.training and all(not p.requires_grad for p in tiny_resnet.parameters())
    before = tiny_resnet.stages[0][1].running_mean.clone()
    enc(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(before, tiny_resnet.stages[0][1].running_mean)
