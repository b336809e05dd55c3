import pytest
import torch
import torchvision

from cxrbench.methods.external import External


def test_missing_checkpoint_says_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrain\.methods\.external\.checkpoint"):
        External({"checkpoint": str(tmp_path / "nope.pt")}).build()
    with pytest.raises(FileNotFoundError, match=r"pretrain\.methods\.external\.checkpoint"):
        External({}).build()


def test_resnet_state_dict_with_prefix(tmp_path):
    net = torchvision.models.resnet18()
    sd = {f"module.encoder.{k}": v for k, v in net.state_dict().items()}
    torch.save(sd, tmp_path / "enc.pth")
    p = {"checkpoint": str(tmp_path / "enc.pth"), "backbone": "resnet18", "image_size": 224,
         "normalize": {"mean": 0.5, "std": 0.25}}
    mod = External(p).build().eval()
    net.fc = torch.nn.Identity()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(mod.encoder(x).pooled, net.eval()(x), atol=1e-5)
    assert mod.normalize == {"mean": 0.5, "std": 0.25, "resize": "longer", "crop": "none", "scale": "unit"}
    assert mod.image_size == 224
    with pytest.raises(KeyError, match="normalize"):
        External({k: v for k, v in p.items() if k != "normalize"}).build()


def test_hf_dinov2_directory(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from cxrbench.models.backbones import build_backbone

    ref = build_backbone("vit_small_patch14", img_size=28)
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=28,
                       mlp_ratio=4, layerscale_value=0.5)
    torch.manual_seed(0)
    hf = Dinov2Model(cfg).eval()
    hf.save_pretrained(tmp_path / "dino")
    p = {"checkpoint": str(tmp_path / "dino"), "backbone": "vit_small_patch14", "backbone_kwargs": {"img_size": 28},
         "image_size": 28, "normalize": {"mean": 0.5307, "std": 0.2583}}
    mod = External(p).build().eval()
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(mod.encoder(x).pooled, want, atol=1e-4)
    assert ref.out_dim == 384
