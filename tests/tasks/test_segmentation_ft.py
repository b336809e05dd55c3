"""segmentation_ft: the encoder is updated (a copy of it), at its own lr; the frozen setting leaves it alone; the
saved examples put images with ground truth first."""

import numpy as np
import pytest
import torch

from cxrbench.registry import TASKS
from cxrbench.tasks.segmentation import SegmentationModel, TrainableEncoder, example_rows
from tests.tasks.test_segmentation import PARAMS, seg_store


class Recorder:
    """Wraps ``cxrbench.engine.fit`` and keeps the module it trained (the model with its encoder copy)."""

    def __init__(self, fit):
        self.fit, self.module = fit, None

    def __call__(self, module, *args, **kwargs):
        self.module = module
        return self.fit(module, *args, **kwargs)


@pytest.fixture
def recorder(monkeypatch):
    import cxrbench.engine as engine

    rec = Recorder(engine.fit)
    monkeypatch.setattr(engine, "fit", rec)
    return rec


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]


def test_encoder_weights_change_in_segmentation_ft_only(make_store, pretrained_factory, tiny_resnet, recorder,
                                                        tmp_path):
    store = seg_store(make_store)
    pre = pretrained_factory(tiny_resnet)
    start = _state(pre.backbone)
    TASKS.get("segmentation")(PARAMS).run(pre, store, 100, 0, tmp_path / "frozen")
    frozen = recorder.module.encoder.backbone
    assert frozen is pre.backbone and not _changed(start, frozen)  # the frozen setting trains the decoder only
    TASKS.get("segmentation_ft")(PARAMS).run(pre, store, 100, 0, tmp_path / "ft")
    tuned = recorder.module.encoder.backbone
    assert isinstance(recorder.module.encoder, TrainableEncoder) and tuned is not pre.backbone
    conv_weights = [k for k in start if k.endswith("0.weight")]  # every stage's conv
    assert set(conv_weights) <= set(_changed(start, tuned))
    assert not _changed(start, pre.backbone)  # the caller's encoder (shared by a job's runs) is untouched
    assert (tmp_path / "ft" / "examples.npz").is_file()


def test_encoder_gets_its_own_learning_rate(tiny_resnet):
    p = {**PARAMS, "encoder_trainable": True, "encoder_lr": 1e-5}
    model = SegmentationModel(tiny_resnet, p, 32, {"mean": 0.5, "std": 0.5}, seed=0)
    enc, rest = model.param_groups(1e-3, 0.05)
    assert enc["lr"] == 1e-5 and rest["lr"] == 1e-3 and enc["weight_decay"] == rest["weight_decay"] == 0.05
    assert len(enc["params"]) == len(list(tiny_resnet.parameters()))
    assert len(enc["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert all(q.requires_grad for q in enc["params"])
    default = SegmentationModel(tiny_resnet, {**p, "encoder_lr": None}, 32, {"mean": 0.5, "std": 0.5}, seed=0)
    assert default.param_groups(2e-4, 0.0)[0]["lr"] == 2e-4


def test_zero_encoder_lr_keeps_the_encoder(make_store, pretrained_factory, tiny_resnet, recorder, tmp_path):
    """The encoder's group follows encoder_lr alone: a negligible lr leaves it (almost) where it started while
    the decoder trains at the engine's lr."""
    store = seg_store(make_store)
    pre = pretrained_factory(tiny_resnet)
    start = _state(pre.backbone)
    params = {**PARAMS, "encoder_lr": 1e-12, "engine": {**PARAMS["engine"], "weight_decay": 0.0}}
    TASKS.get("segmentation_ft")(params).run(pre, store, 100, 0, tmp_path)
    tuned = recorder.module.encoder.backbone
    for k in (k for k in start if k.endswith("0.weight")):
        assert torch.allclose(start[k], tuned.state_dict()[k], atol=1e-9)


def test_example_rows_put_positives_first():
    masks = np.zeros((6, 4, 4), np.uint8)
    masks[3, 1, 1] = masks[5, 2, 2] = 1
    assert example_rows(masks, 4).tolist() == [3, 5, 0, 1]
    assert example_rows(masks, 1).tolist() == [3]
    assert example_rows(np.zeros((2, 4, 4)), 4).tolist() == [0, 1]


def test_saved_examples_hold_the_test_positives(make_store, pretrained_factory, tiny_resnet, tmp_path):
    store = seg_store(make_store)  # test rows 28..35, positives 28, 29, 30
    TASKS.get("segmentation_ft")(PARAMS).run(pretrained_factory(tiny_resnet), store, 100, 0, tmp_path)
    ex = np.load(tmp_path / "examples.npz")
    assert ex["row"].tolist() == [28, 29, 30, 31]
    assert ex["mask"][:3].reshape(3, -1).any(1).all() and not ex["mask"][3].any()


@pytest.mark.slow  # ~12 s on a busy 2-core host: with the other resume tests in make test-slow
def test_interrupted_segmentation_ft_resumes_bit_identically(make_store, pretrained_factory, tmp_path, monkeypatch):
    """The trained encoder copy is part of every checkpoint: a killed run resumes to the same weights and metrics."""
    from tests.tasks import test_task_resume as resume

    monkeypatch.setitem(resume.CASES, "segmentation_ft", ("siim", resume.SEG, resume.seg_store))
    ref = resume.run("segmentation_ft", make_store, pretrained_factory, tmp_path, "ref")
    want = resume.state(tmp_path, "ref")
    assert any(k.startswith("encoder.backbone.") for k in want[0]["model"])
    for i, (step, validation) in enumerate(resume.MOMENTS):
        resume.arm(monkeypatch, step=step, validation=validation)
        with pytest.raises(resume.Killed):
            resume.run("segmentation_ft", make_store, pretrained_factory, tmp_path, f"run{i}")
        torch.rand(7)
        got = resume.run("segmentation_ft", make_store, pretrained_factory, tmp_path, f"run{i}")
        resume.assert_same(got, ref, f"metrics, interrupted at {(step, validation)}")
        resume.assert_same(resume.state(tmp_path, f"run{i}"), want, f"state, interrupted at {(step, validation)}")
