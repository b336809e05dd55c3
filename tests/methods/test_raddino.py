"""RAD-DINO module: crops and masks as pure functions of (seed, step, rows), who sees what, centre updates."""

import copy

import pytest
import torch

from cxrbench.registry import METHODS


def _module(tiny_params, **over):
    return METHODS.get("raddino")({**tiny_params["raddino"], **over}).build().train()


def _batch(rows):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(len(rows), 1, 32, 32, generator=g), "row": torch.tensor(rows)}


def test_loss_is_a_pure_function_of_step_and_rows(tiny_params):
    a = _module(tiny_params)
    b = copy.deepcopy(a)
    la = a(_batch([3, 4, 5, 6]))["loss"].item()
    assert b(_batch([3, 4, 5, 6]))["loss"].item() == la  # same step, same rows: same crops and masks
    c, d = copy.deepcopy(b), copy.deepcopy(b)
    d.step = 1
    assert c(_batch([3, 4, 5, 7]))["loss"].item() != d(_batch([3, 4, 5, 7]))["loss"].item()


def test_teacher_sees_unmasked_globals_student_masked_and_locals(tiny_params):
    m = _module(tiny_params)
    calls = {"student": [], "teacher": []}
    for who, enc in (("student", m.encoder), ("teacher", m.teacher_encoder)):
        fwd = enc.forward

        def rec(x, mask=None, _fwd=fwd, _who=who):
            calls[_who].append((tuple(x.shape), None if mask is None else mask.clone()))
            return _fwd(x, mask=mask)

        enc.forward = rec
    m(_batch([0, 1, 2, 3]))
    (t_shape, t_mask), = calls["teacher"]
    assert t_shape == (8, 3, 32, 32) and t_mask is None  # both global crops of 4 images, unmasked
    (g_shape, g_mask), (l_shape, l_mask) = calls["student"]
    assert g_shape == (8, 3, 32, 32) and l_shape == (8, 3, 16, 16) and l_mask is None  # 2 locals of 16 px
    per_image = g_mask.sum(1)
    assert g_mask.shape == (8, 4) and int((per_image > 0).sum()) == 4  # half of the global crops masked


def test_centres_follow_teacher_logits_and_skip_empty_masks(tiny_params):
    m = _module(tiny_params, mask_probability=0.0)
    m(_batch([0, 1, 2, 3]))
    assert torch.equal(m.ibot_center, torch.zeros_like(m.ibot_center))  # no masked patch: no NaN centre
    assert m.dino_center.abs().sum() > 0 and torch.isfinite(m.dino_center).all()


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_teacher_targets_are_distributions(tiny_params, centering):
    m = _module(tiny_params, centering=centering)
    t = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    p = m._targets(t, "dino_center")
    assert torch.allclose(p.sum(1), torch.ones(6), atol=1e-5)
    if centering == "centering":  # centre became 0.9 * 0 + 0.1 * mean(t)
        assert torch.allclose(m.dino_center, 0.1 * t.mean(0, keepdim=True), atol=1e-6)
