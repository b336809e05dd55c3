"""Backbones: shapes, strides, channels, values against the wrapped libraries, determinism, round trips."""

import pytest
import torch
import torchvision

from cxrbench.models._base import Backbone
from cxrbench.models.backbones import build_backbone, read_state_dict
from cxrbench.registry import BACKBONES

NAMES = BACKBONES.names()
EXPECTED = {  # name -> (out_dim, pyramid channels, strides)
    "resnet18": (512, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    "resnet50": (2048, [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "vit_tiny_patch16": (192, [192], [16]),
    "vit_small_patch16": (384, [384], [16]),
    "vit_small_patch14": (384, [384], [14]),
    "vit_base_patch14": (768, [768], [14]),
}


def _make(name: str, seed: int = 0) -> tuple[Backbone, int]:
    torch.manual_seed(seed)
    if name.startswith("vit"):
        size = 28 if name.endswith("14") else 32
        return build_backbone(name, img_size=size).eval(), size
    return build_backbone(name).eval(), 64


def test_registry_has_all_backbones():
    assert set(EXPECTED) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_strides_channels(name):
    b, size = _make(name)
    dim, chans, strides = EXPECTED[name]
    assert (b.out_dim, b.pyramid_channels, b.pyramid_strides) == (dim, chans, strides)
    with torch.no_grad():
        out = b(torch.randn(2, 3, size, size))
    assert out.pooled.shape == (2, dim)
    assert [tuple(f.shape) for f in out.pyramid] == [
        (2, c, size // s, size // s) for c, s in zip(chans, strides, strict=True)
    ]
    if name.startswith("vit"):
        n = (size // strides[0]) ** 2
        assert out.tokens.shape == (2, n, dim)
        assert torch.equal(out.pyramid[0].flatten(2).transpose(1, 2), out.tokens)
    else:
        assert out.tokens is None


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_pooled_is_mean_of_layer4_and_matches_torchvision(name):
    b, _ = _make(name)
    x = torch.randn(2, 3, 64, 64)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    ref.load_state_dict(b.state_dict(), strict=False)
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        out = b(x)
        expected = ref(x.contiguous(memory_format=torch.channels_last))  # what the backbone's no-grad pass runs
    assert torch.allclose(out.pooled, out.pyramid[-1].mean(dim=(2, 3)))
    assert torch.allclose(out.pooled, expected, atol=1e-5)


def test_vit_matches_timm_forward_and_other_sizes():
    b, _ = _make("vit_small_patch16")
    x = torch.randn(2, 3, 32, 32)  # the configured size: timm's forward exactly
    with torch.no_grad():
        out = b(x)
        ref = b.vit.forward_features(x)
        other = b(torch.randn(2, 3, 32, 48))  # non-square, not the configured size
    assert torch.equal(out.pooled, ref[:, 0]) and torch.equal(out.tokens, ref[:, 1:])
    assert other.pyramid[0].shape == (2, 384, 2, 3)
    with torch.no_grad():
        padded = b(torch.randn(1, 3, 30, 32))  # zero-padded below to 32 rows
    assert padded.pyramid[0].shape == (1, 384, 2, 2)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        b(torch.randn(1, 3, 30, 32), mask=torch.zeros(1, 4, dtype=torch.bool))


def test_vit_mask_token():
    b, _ = _make("vit_tiny_patch16")
    x = torch.randn(2, 3, 32, 32)
    none = torch.zeros(2, 2, 2, dtype=torch.bool)
    some = none.clone()
    some[0, 0, 0] = True
    with torch.no_grad():
        ref = b(x)
        assert torch.equal(b(x, mask=none).pooled, ref.pooled)
        masked = b(x, mask=some).pooled
    assert not torch.allclose(masked[0], ref.pooled[0])
    assert torch.allclose(masked[1], ref.pooled[1], atol=1e-6)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "vit_base_patch14" else n for n in NAMES]
)  # ViT-B/14 at 518 px takes ~10 s: make test-slow
def test_determinism_and_state_dict_round_trip(name):
    a, size = _make(name, seed=3)
    b, _ = _make(name, seed=3)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ya = a(x).pooled
        assert torch.equal(ya, b(x).pooled)
        assert torch.equal(ya, a(x).pooled)
        c, _ = _make(name, seed=4)
        assert not torch.equal(ya, c(x).pooled)
        c = build_backbone(**a.config).eval()
        c.load_state_dict(a.state_dict())
        assert torch.equal(ya, c(x).pooled)


def test_weights_file_torchvision_layout(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)  # includes fc.*, which is dropped
    b = build_backbone("resnet18", weights=str(path))
    assert b.config == {"name": "resnet18"}
    assert torch.equal(b.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    torch.save({"state_dict": {f"module.{k}": v for k, v in b.state_dict().items()}}, tmp_path / "wrapped.pt")
    wrapped = build_backbone("resnet18", weights=str(tmp_path / "wrapped.pt"))
    assert torch.equal(wrapped.conv1.weight, tv.conv1.weight)


def test_weights_file_bad_layout_names_keys(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="missing .*layer1"):
        build_backbone("resnet18", weights=str(tmp_path / "bad.pt"))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded|Nothing is downloaded") as err:
        build_backbone("vit_tiny_patch16", img_size=32, weights=str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.safetensors")


def _hf_v4_key(k: str) -> str:
    """transformers 5 Dinov2 key -> the transformers 4 key layout used by checkpoints on the Hub."""
    pairs = [
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
    ]
    for new, old in pairs:
        k = k.replace(new, old)
    return k


@pytest.mark.parametrize("layout", ["v5", "v4"])
def test_hf_dinov2_layout_gives_the_same_features(tmp_path, layout):
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=28,
        layerscale_value=0.5,
    )
    torch.manual_seed(0)
    hf = Dinov2Model(cfg).eval()
    path = tmp_path / "model.safetensors"
    rename = _hf_v4_key if layout == "v4" else str
    save_file({rename(k): v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    b = build_backbone("vit_small_patch14", img_size=28, weights=str(path)).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        out = b(x)
    assert torch.allclose(out.pooled, ref[:, 0], atol=1e-4)
    assert torch.allclose(out.tokens, ref[:, 1:], atol=1e-4)
    assert torch.equal(b.mask_token.data, hf.embeddings.mask_token.data.reshape(1, -1))


def test_vit_zero_pads_a_side_that_is_not_a_multiple_of_its_patch():
    """An 18 x 20 input to a /16 ViT equals the 32 x 32 image padded with zeros below and right: a 2 x 2 grid."""
    import torch
    import torch.nn.functional as F

    from cxrbench.models.backbones import build_backbone

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny_patch16", img_size=32).eval()
    x = torch.rand(2, 3, 18, 20)
    with torch.no_grad():
        out = vit(x)
        ref = vit(F.pad(x, (0, 12, 0, 14)))
    assert out.pyramid[0].shape == (2, vit.out_dim, 2, 2)
    assert torch.equal(out.pooled, ref.pooled) and torch.equal(out.pyramid[0], ref.pyramid[0])
