from types import SimpleNamespace

import pytest

from cxrbench.models.backbones import build_backbone
from cxrbench.registry import TASKS
from cxrbench.tasks._base import NotApplicable


def test_setting_is_forced_and_registered():
    task = TASKS.get("segmentation_ed")({"datasets": ["siim"], "setting": "frozen_encoder"})
    assert task.params["setting"] == "encoder_decoder"
    assert task.datasets == TASKS.get("segmentation").datasets


def test_method_without_decoder_is_not_applicable():
    task = TASKS.get("segmentation_ed")({"datasets": ["siim"]})
    pretrained = SimpleNamespace(method="random", backbone=build_backbone("resnet18"), full_state=None, vl=None)
    with pytest.raises(NotApplicable, match="random"):
        task.check(pretrained)


def test_g2d_full_state_layout_is_found():
    from cxrbench.models.unet import UNetDecoder
    from cxrbench.tasks.segmentation import decoder_state

    bb = build_backbone("resnet18")
    dec = UNetDecoder(bb.pyramid_channels, bb.pyramid_strides, (16, 16, 8, 8, 8))
    pretrained = UNetDecoder(bb.pyramid_channels, bb.pyramid_strides, (16, 16, 8, 8, 8))
    state, reason = decoder_state({"encoder": {}, "decoder": pretrained.state_dict(), "decoder_kwargs": {}}, dec)
    assert reason == "" and set(state) == set(dec.state_dict())
    dec.load_state_dict(state)
    for a, b in zip(dec.state_dict().values(), pretrained.state_dict().values(), strict=True):
        assert (a == b).all()
