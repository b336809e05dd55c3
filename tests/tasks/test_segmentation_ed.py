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
