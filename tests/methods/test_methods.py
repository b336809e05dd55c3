"""Every registered method at demo size: build, one training step, gradients where they belong, export round trip."""

import math

import pytest
import torch

from cxrbench.methods._common import count_parameters
from cxrbench.methods.pseudo_mask import pseudo_masks
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


@pytest.mark.parametrize("name", ["g2d", "mflag"])
def test_text_pooling_picks_the_reports_vector(name, tiny_params, corpus):
    """text.pooling cls: the [CLS] position (G2D projects every token first, M-FLAG projects the [CLS] state);
    mean: the mean over the real tokens only (the padding of a short report left out)."""
    texts = [corpus[0], "no"]  # the second report is one word: most of its positions are padding
    out = {}
    for pooling in ("cls", "mean"):
        p = {**tiny_params[name], "text": {**tiny_params[name]["text"], "pooling": pooling}}
        module = METHODS.get(name)(p).build(corpus=corpus).eval()
        with torch.no_grad():
            t = module.text(texts)
            n = t.attention_mask.sum(1)
            if name == "g2d":
                per_token = module.text_projector(t.tokens.transpose(1, 2)).transpose(1, 2)  # (B, L, D)
                want = {"cls": per_token[:, 0],
                        "mean": torch.stack([per_token[i, : int(n[i])].mean(0) for i in range(2)])}[pooling]
            else:
                state = {"cls": t.tokens[:, 0],
                         "mean": torch.stack([t.tokens[i, : int(n[i])].mean(0) for i in range(2)])}[pooling]
                want = module.text_projector(state)
            out[pooling] = module.text_features(texts)
        assert int(n[1]) < t.attention_mask.shape[1]  # padding present
        torch.testing.assert_close(out[pooling], want)
    assert not torch.allclose(out["cls"], out["mean"])


def test_mflag_orth_batch_size_option(tiny_batch, tiny_params, corpus, monkeypatch):
    import cxrbench.methods.mflag as mflag_module

    seen = []
    real = mflag_module.orthogonality_loss
    monkeypatch.setattr(mflag_module, "orthogonality_loss", lambda v, **kw: seen.append(kw) or real(v, **kw))
    p = (tiny_params["mflag"])
    a = METHODS.get("mflag")(p).build(corpus=corpus).train()(tiny_batch)["loss_orth"]
    b = METHODS.get("mflag")({**p, "orth_batch_size": 8}).build(corpus=corpus).train()(tiny_batch)["loss_orth"]
    assert [kw["batch_size"] for kw in seen] == [None, 8]  # paper: B (4 here); code: the configured size
    assert float(a) != pytest.approx(float(b))
    with pytest.raises(ValueError, match="orth_batch_size"):
        METHODS.get("mflag")({**p, "orth_batch_size": 0}).build(corpus=corpus)


def test_g2d_attention_maps_are_the_raw_patch_attention(tiny_params, corpus):
    module = METHODS.get("g2d")(tiny_params["g2d"]).build(corpus=corpus).eval()
    feat = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    pooled, attn, dense = module.pool(feat)
    assert attn.shape == (2, 4, 9) and pooled.shape == (2, 16) and dense.shape == (2, 16, 3, 3)
    # reference: the full softmax over [mean; patches] for head 0, mean-token column dropped, NOT renormalised
    p = module.pool
    t = torch.cat([feat.flatten(2).mean(2, keepdim=True), feat.flatten(2)], 2).transpose(1, 2) + p._pos(3, 3)
    q, k = p.q(t[:, :1])[..., :4], p.k(t)[..., :4]
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, -1)[:, 0]
    assert torch.allclose(attn[:, 0], a[:, 1:], atol=1e-6)
    assert torch.allclose(attn[:, 0].sum(-1), 1 - a[:, 0], atol=1e-6)


def _controlled_pool(mean_logits):
    """heads 2, dim 2 (one channel per head): logit of token j in head h = t_j[h] (q = 1, k = identity, scale 1);
    the positional embedding sets the mean token's logits to ``mean_logits`` given the features below."""
    from cxrbench.methods.g2d import AttentionPool

    pool = AttentionPool(2, 2, 2)
    alpha, beta = math.log(4.0), math.log(3.0)
    feat = torch.tensor([[alpha, alpha, 0.0, 0.0], [0.0, 0.0, beta, beta]]).reshape(1, 2, 2, 2)  # A A / B B
    with torch.no_grad():
        pool.q.weight.zero_()
        pool.q.bias.fill_(1.0)
        pool.k.weight.copy_(torch.eye(2))
        pool.k.bias.zero_()
        pool.pos.zero_()
        pool.pos[0] = torch.tensor(mean_logits) - feat.flatten(2).mean(2)[0]
    return pool, feat


def test_g2d_pseudo_mask_weighs_heads_alike_no_renormalisation(tiny_params, corpus):
    """Head 0 puts most weight on the mean token (logit ln 10) and prefers the top row A; head 1 nearly none
    (logit -30) and prefers the bottom row B. By hand: head 0 = (10, 4, 4, 1, 1) / 20 -> patches (.2, .2, .05, .05);
    head 1 = (e^-30, 1, 1, 3, 3) / 8 -> (1/8, 1/8, 3/8, 3/8). Plain mean over heads: A = .1625 < B = .2125, so the
    released code's mask (strict > the median of the map) is the bottom row. Renormalising each head first would give
    head 0 (.4, .4, .1, .1): A = .2625 > B = .2375, the top row."""
    pool, feat = _controlled_pool([math.log(10.0), -30.0])
    _, attn, _ = pool(feat)
    z1 = math.exp(-30.0) + 8.0
    expected = [[0.2, 0.2, 0.05, 0.05], [1 / z1, 1 / z1, 3 / z1, 3 / z1]]
    assert attn[0].tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    m = pseudo_masks(attn, torch.ones(1, 1, 4, 4), percentile=50.0, body_mask=False, smooth=False, inclusive=False)
    want = torch.zeros(4, 4)
    want[2:] = 1.0
    assert torch.equal(m[0, 0], want)


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


def test_g2d_reads_explicit_parameters_with_paper_defaults(tiny_batch, tiny_params, corpus, monkeypatch):
    import cxrbench.methods.g2d as g2d_module

    seen = {}
    monkeypatch.setattr(g2d_module, "pseudo_masks", lambda attn, view, **kw: seen.update(pm=kw) or
                        torch.zeros(view.shape[0], 1, *view.shape[-2:]))
    monkeypatch.setattr(g2d_module, "pseudo_seg_loss", lambda logits, y, **kw: seen.update(seg=kw) or logits.mean())
    monkeypatch.setattr(g2d_module, "symmetric_infonce", lambda a, b, **kw: seen.update(nce=kw) or a.sum() * 0)
    p = {k: v for k, v in tiny_params["g2d"].items() if k != "variant"}
    paper = METHODS.get("g2d")(p).build(corpus=corpus).train()
    paper(tiny_batch)
    assert paper.input.normalize == {"mean": 0.0, "std": 1.0, "resize": "longer", "crop": "none", "scale": "unit"}
    assert paper.warmup_global_steps == 0
    assert seen["nce"]["reduction"] == "mean"
    assert seen["seg"] == {"dice_on_logits": False, "dice_smooth": 1.0, "dice_weight": 0.5, "bce_weight": 0.5}
    assert seen["pm"] == {"percentile": 85.0, "aggregate": "mean", "body_mask": True, "smooth": True, "inclusive": True}
    code_seg = {"dice_on_logits": True, "dice_smooth": 1e-5, "dice_weight": 1.0, "bce_weight": 0.2}
    code_pm = {"percentile": 85.0, "aggregate": "mean", "body_mask": False, "smooth": False, "inclusive": False}
    code = METHODS.get("g2d")({**p, "infonce_reduction": "sum", "seg_loss": code_seg, "pseudo_mask": code_pm,
                               "normalize": {"mean": 0.449, "std": 0.226}}).build(corpus=corpus).train()
    code(tiny_batch)
    assert seen["nce"]["reduction"] == "sum" and seen["seg"] == code_seg and seen["pm"] == code_pm
    assert {k: code.input.normalize[k] for k in ("mean", "std")} == {"mean": 0.449, "std": 0.226}
    partial = METHODS.get("g2d")({**p, "seg_loss": {"bce_weight": 0.2}}).build(corpus=corpus)
    assert partial.seg_loss_params["bce_weight"] == 0.2 and partial.seg_loss_params["dice_weight"] == 0.5


@pytest.mark.parametrize("bad, match", [
    ({"infonce_reduction": "avg"}, "infonce_reduction"),
    ({"seg_loss": {"dice_smoth": 1.0}}, r"seg_loss: unknown key\(s\) \['dice_smoth'\]"),
    ({"pseudo_mask": {"percentil": 85}}, "pseudo_mask: unknown"),
    ({"dice_smooth": 1.0}, "replaced by seg_loss.dice_smooth"),
])
def test_g2d_bad_parameters_name_the_key(tiny_params, corpus, bad, match):
    with pytest.raises(ValueError, match=match):
        METHODS.get("g2d")({**tiny_params["g2d"], **bad}).build(corpus=corpus)


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
