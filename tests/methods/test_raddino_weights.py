"""Released weights as inputs (no download): a transformers ``Dinov2Model.save_pretrained`` directory and RAD-DINO's
DINOv2-format release (``backbone_compatible.safetensors`` in DINOv2's key names + ``dino_head.safetensors``), built
here with random weights in exactly those formats. Loaded into the project's ViT backbone / RAD-DINO head, each
reproduces the reference module's forward: transformers' Dinov2Model (CLS and patch tokens, at the native and at
another input size) and DINOv2's DINOHead (``dinov2/layers/dino_head.py``, re-built below with torch's weight_norm).
"""

import re
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cxrbench.models.backbones import build_backbone
from cxrbench.registry import METHODS

DIM, LAYERS, HEADS, PATCH, SIZE = 64, 2, 4, 14, 28
VIT_KW = {"img_size": SIZE, "embed_dim": DIM, "depth": LAYERS, "num_heads": HEADS}


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, patch_size=PATCH,
                       image_size=SIZE, layerscale_value=0.5)
    torch.manual_seed(0)
    model = Dinov2Model(cfg).eval()
    with torch.no_grad():  # away from the constant inits (layer scale, norms, tokens), so a mixed-up key shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _dinov2_names(hf_sd):
    """transformers Dinov2Model keys -> the original DINOv2 ``DinoVisionTransformer`` keys (by hand)."""
    out, qkv = {}, {}
    for k, v in hf_sd.items():
        m = re.match(r"encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(\w+)",
                     k)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2][0]] = v
            continue
        k = (k.replace("embeddings.cls_token", "cls_token").replace("embeddings.mask_token", "mask_token")
             .replace("embeddings.position_embeddings", "pos_embed")
             .replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
             .replace("attention.output.dense", "attn.proj").replace("attention.o_proj", "attn.proj")
             .replace("layer_scale1.lambda1", "ls1.gamma").replace("layer_scale2.lambda1", "ls2.gamma")
             .replace("encoder.layer.", "blocks.").replace("layernorm.", "norm."))
        out[k] = v
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    out["mask_token"] = out["mask_token"].reshape(1, DIM)  # DINOv2 stores (1, D)
    return out


def _same_as_hf(backbone, hf, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        out = backbone.eval()(x)
    assert torch.allclose(out.pooled, ref[:, 0], rtol=0, atol=1e-6)
    assert torch.allclose(out.tokens, ref[:, 1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [SIZE, 2 * SIZE])  # native grid, then Dinov2Model's bicubic interpolation
def test_save_pretrained_directory_gives_dinov2model_tokens(tmp_path, hf_model, size):
    hf_model.save_pretrained(tmp_path / "rad-dino")
    b = build_backbone("vit_small_patch14", weights=str(tmp_path / "rad-dino"), **VIT_KW)
    _same_as_hf(b, hf_model, size)
    assert torch.equal(b.mask_token.data, hf_model.embeddings.mask_token.data.reshape(1, DIM))


def test_dinov2_format_backbone_gives_dinov2model_tokens(tmp_path, hf_model):
    sd = _dinov2_names(hf_model.state_dict())
    assert "blocks.0.attn.qkv.weight" in sd and "blocks.1.ls2.gamma" in sd and "norm.weight" in sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "backbone_compatible.safetensors"))
    for where in (tmp_path / "backbone_compatible.safetensors", tmp_path):  # the file or its directory
        b = build_backbone("vit_small_patch14", weights=str(where), **VIT_KW)
        _same_as_hf(b, hf_model, SIZE)
        _same_as_hf(b, hf_model, 3 * PATCH)


class _DINOv2Head(nn.Module):
    """DINOv2's DINOHead re-built: MLP (GELU), L2 normalise, weight-normalised linear without bias."""

    def __init__(self, d, hidden, bottleneck, k):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated; DINOv2 uses it
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, k, bias=False))

    def forward(self, x):
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1, p=2, eps=1e-12))


def test_raddino_continues_from_the_release_backbone_and_head(tmp_path, hf_model, tiny_params):
    save_file({k: v.contiguous() for k, v in _dinov2_names(hf_model.state_dict()).items()},
              str(tmp_path / "backbone_compatible.safetensors"))
    torch.manual_seed(1)
    ref = _DINOv2Head(DIM, 32, 16, 64)
    with torch.no_grad():
        ref.last_layer.weight_g.uniform_(0.5, 2.0)  # a trained gain, not DINOv2's initial 1
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "dino_head.safetensors"))
    assert {"last_layer.weight_g", "last_layer.weight_v", "mlp.4.bias"} <= set(ref.state_dict())
    p = {**tiny_params["raddino"], "backbone": "vit_small_patch14",
         "backbone_kwargs": {**VIT_KW, "weights": str(tmp_path / "backbone_compatible.safetensors")},
         "crops": {"global_size": SIZE, "local_size": PATCH, "n_local": 1},
         "init_head": str(tmp_path / "dino_head.safetensors")}
    m = METHODS.get("raddino")(p).build().eval()
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x)
        assert torch.allclose(m.head(x), want, rtol=0, atol=1e-6)
        assert torch.allclose(m.teacher_head(x), want, rtol=0, atol=1e-6)
    _same_as_hf(m.encoder, hf_model, SIZE)
    _same_as_hf(m.teacher_encoder, hf_model, SIZE)
    with pytest.raises(KeyError, match=r"last.*prototypes"):
        METHODS.get("raddino")({**p, "prototypes": 65}).build()


def test_missing_weights_directory_file_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="backbone_compatible.safetensors"):
        build_backbone("vit_small_patch14", weights=str(tmp_path / "empty"), **VIT_KW)
