"""Every registered method at demo size: build, one training step, gradients where they belong, export round trip."""

import math

import pytest
import torch

from cxrbench.methods._common import count_parameters
from cxrbench.pretrain import export, load_pretrained
from cxrbench.registry import METHODS


def _params(name, tmp_path, tiny):
    if name == "external":  # points at a checkpoint written by the random baseline
        m = METHODS.get("random")(tiny["random"])
        export(m.build(), "random", tiny["random"], tmp_path / "rand")
        return {"checkpoint": str(tmp_path / "rand")}
    return tiny[name]


@pytest.mark.parametrize("name", METHODS.names())
def test_build_step_and_round_trip(name, tmp_path, tiny_batch, tiny_params, corpus):
    method = METHODS.get(name)(_params(name, tmp_path, tiny_params))
    module = method.build(corpus=corpus)
    if method.trains():
        module.train()
        out = module(tiny_batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        out["loss"].backward()
        grads = [p.grad for p in module.encoder.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"
    export(module, name, method.params, tmp_path / "ckpt")
    pre = load_pretrained(tmp_path / "ckpt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref = module.export_backbone().eval()
    with torch.no_grad():
        assert torch.equal(pre.backbone(x).pooled, ref(x).pooled)
    assert (pre.vl is not None) == method.has_text
    if method.has_text:
        with torch.no_grad():
            g0, d0 = module.eval().embed_image(x)
            g1, d1 = pre.vl.embed_image(x)
            assert torch.allclose(g0, g1) and torch.allclose(d0, d1)
            assert torch.allclose(module.embed_text(corpus[:2]), pre.vl.embed_text(corpus[:2]))
            assert torch.allclose(g1.norm(dim=-1), torch.ones(2)) and torch.allclose(d1.norm(dim=1), torch.ones(1))


def test_mflag_text_tower_frozen_and_counts(tiny_batch, tiny_params, corpus):
    module = METHODS.get("mflag")(tiny_params["mflag"]).build(corpus=corpus).train()
    module(tiny_batch)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in module.text.parameters())
    assert all(p.grad is not None for p in module.text_projector.parameters())
    counts = count_parameters(module)
    text_n = sum(p.numel() for p in module.text.parameters())
    assert counts["total"] - counts["trainable"] == text_n
    assert counts["frozen_fraction"] == pytest.approx(text_n / counts["total"])


def test_mflag_orth_batch_size_option(tiny_batch, tiny_params, corpus):
    p = (tiny_params["mflag"])
    a = METHODS.get("mflag")(p).build(corpus=corpus).train()(tiny_batch)["loss_orth"]
    b = METHODS.get("mflag")({**p, "orth_batch_size": 8}).build(corpus=corpus).train()(tiny_batch)["loss_orth"]
    assert float(a) != pytest.approx(float(b))


def test_g2d_attention_maps_sum_to_one_and_follow_raw_attention(tiny_params, corpus):
    module = METHODS.get("g2d")(tiny_params["g2d"]).build(corpus=corpus).eval()
    feat = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    pooled, attn, dense = module.pool(feat)
    assert attn.shape == (2, 4, 9) and pooled.shape == (2, 16) and dense.shape == (2, 16, 3, 3)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 4))
    # reference: the full softmax over [mean; patches] for head 0, patch part renormalised
    p = module.pool
    t = torch.cat([feat.flatten(2).mean(2, keepdim=True), feat.flatten(2)], 2).transpose(1, 2) + p._pos(3, 3)
    q, k = p.q(t[:, :1])[..., :4], p.k(t)[..., :4]
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1)[:, 0, 1:]
    assert torch.allclose(attn[:, 0], a / a.sum(-1, keepdim=True), atol=1e-6)


def test_g2d_warmup_is_global_only(tiny_batch, tiny_params, corpus):
    p = {**(tiny_params["g2d"]), "warmup_global_steps": 2}
    module = METHODS.get("g2d")(p).build(corpus=corpus).train()
    out = module(tiny_batch)
    assert "loss_dense" not in out
    out["loss"].backward()
    assert all(q.grad is None for q in module.decoder.parameters())
    module.on_step_end(2, 10)  # two optimiser steps done
    out = module(tiny_batch)
    assert torch.isclose(out["loss"].detach(), out["loss_global"] + out["loss_dense"])
    assert module.state_dict()["_extra_state"] == {"step": 2}


def test_g2d_variant_changes_normalisation(tiny_params, corpus):
    paper = METHODS.get("g2d")(tiny_params["g2d"]).build(corpus=corpus)
    code = METHODS.get("g2d")({**tiny_params["g2d"], "variant": "code"}).build(corpus=corpus)
    assert paper.input.normalize == {"mean": 0.0, "std": 1.0}
    assert code.input.normalize == {"mean": 0.449, "std": 0.226}
    with pytest.raises(ValueError, match="variant"):
        METHODS.get("g2d")({**tiny_params["g2d"], "variant": "x"}).build(corpus=corpus)


def test_raddino_teacher_no_grad_ema_and_schedules(tiny_batch, tiny_params, corpus):
    module = METHODS.get("raddino")(tiny_params["raddino"]).build().train()
    assert module.current_teacher_temp() == pytest.approx(0.04)
    module(tiny_batch)["loss"].backward()
    teacher = list(module.teacher_encoder.parameters()) + list(module.teacher_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    before = [p.clone() for p in module.teacher_encoder.parameters()]
    with torch.no_grad():
        for p in module.encoder.parameters():
            p.add_(1.0)
    module.on_step_end(1, 4)  # after step 1 of 4: m = 1 - 0.008 (cos(pi / 4) + 1) / 2
    m = 1 - 0.008 * (math.cos(math.pi / 4) + 1) / 2
    after = list(module.teacher_encoder.parameters())
    assert torch.allclose(after[0], m * before[0] + (1 - m) * (before[0] + 1.0), atol=1e-6)
    assert module.current_teacher_temp() == pytest.approx(0.055)  # halfway through the 2-step warm-up
    module.on_step_end(4, 4)  # momentum 1 at the end: the teacher no longer moves
    snap = [p.clone() for p in module.teacher_encoder.parameters()]
    module.on_step_end(4, 4)
    assert all(torch.equal(a, b) for a, b in zip(snap, module.teacher_encoder.parameters(), strict=True))


def test_raddino_last_layer_frozen_then_trained(tiny_batch, tiny_params, corpus):
    p = {**(tiny_params["raddino"]), "freeze_last_layer_steps": 1}
    module = METHODS.get("raddino")(p).build().train()
    module(tiny_batch)["loss"].backward()
    assert module.head.last.grad is None
    module.on_step_end(1, 10)
    module(tiny_batch)["loss"].backward()
    assert module.head.last.grad is not None


def test_raddino_layerwise_lr_decay(tiny_params, corpus):
    module = METHODS.get("raddino")(tiny_params["raddino"]).build()
    groups = module.param_groups(1.0, 0.04)
    n_layers = len(module.encoder.vit.blocks)  # 12 for vit_tiny
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[0] == pytest.approx(0.9 ** (n_layers + 1)) and scales[-1] == pytest.approx(1.0)
    ids = {id(p): g for g in groups for p in g["params"]}
    assert ids[id(module.encoder.vit.blocks[0].attn.qkv.weight)]["lr"] == pytest.approx(0.9**n_layers)
    assert ids[id(module.encoder.vit.blocks[0].attn.qkv.bias)]["weight_decay"] == 0.0
    assert ids[id(module.head.last)]["weight_decay"] == pytest.approx(0.04)
    n_student = sum(1 for p in module.encoder.parameters()) + sum(1 for p in module.head.parameters())
    assert len(ids) == n_student and not any(id(p) in ids for p in module.teacher_encoder.parameters())
