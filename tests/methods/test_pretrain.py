"""run_pretrain on a tiny prepared synthetic MIMIC store, and load_pretrained on what it writes."""

import json

import pytest
import torch

from cxrbench.pretrain import load_pretrained, run_pretrain

ENGINE = {"epochs": 6, "batch_size": 8, "lr": 2e-3, "weight_decay": 1e-4, "log_every": 1, "progress": False,
          "ckpt_every": 1000, "device": "cpu"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from cxrbench.data.prepare import prepare_dataset
    from cxrbench.data.synthetic.api import generate

    root = tmp_path_factory.mktemp("mimic")
    generate(root / "raw", seed=0, sizes={"mimic": 16}, image_size=64, datasets=["mimic"])
    prepare_dataset("mimic", root / "raw" / "mimic", root / "prep", size=32, workers=1, progress=False)
    return root / "prep"


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("name", [pytest.param("g2d", marks=pytest.mark.slow), "mflag",
                                  pytest.param("raddino", marks=pytest.mark.slow)])  # ~10 s each: make test-slow
def test_run_pretrain_lowers_loss_and_round_trips(name, store, tmp_path, tiny_params):
    params = tiny_params[name]
    summary = run_pretrain(name, params, ENGINE, store, tmp_path / name, seed=3)
    curves = (tmp_path / name / "train" / "curves.csv").read_text().splitlines()
    col = curves[0].split(",").index("loss")
    losses = [float(r.split(",")[col]) for r in curves[1:]]
    assert summary["steps"] == len(losses) >= 8
    if name != "raddino":  # DINO's loss is not monotone (teacher targets move); its EMA is checked below
        assert _mean(losses[-3:]) < _mean(losses[:3]), losses
    for f in ("encoder.pt", "model.pt", "config.json", "params.json"):
        assert (tmp_path / name / f).is_file()
    counts = json.loads((tmp_path / name / "params.json").read_text())
    assert counts["model"]["trainable"] <= counts["model"]["total"]
    enc = torch.load(tmp_path / name / "encoder.pt", weights_only=False)
    expected_norm = {"g2d": (0.0, 1.0), "mflag": (0.5, 0.5), "raddino": (0.5307, 0.2583)}[name]
    assert (enc["normalize"]["mean"], enc["normalize"]["std"]) == expected_norm
    pre = load_pretrained(tmp_path / name)
    assert pre.method == name and pre.image_size == 32
    if name == "raddino":  # the exported encoder is the EMA teacher: moved from init, not the student
        model = torch.load(tmp_path / name / "model.pt", weights_only=False)["state_dict"]
        init = run_pretrain("random", {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 32},
                                       "image_size": 32}, ENGINE, store, tmp_path / "init", seed=3)
        w = "vit.blocks.0.attn.qkv.weight"
        init_w = torch.load(tmp_path / "init" / "encoder.pt", weights_only=False)["state_dict"][w]
        assert init["steps"] == 0 and torch.equal(model[f"teacher_encoder.{w}"], enc["state_dict"][w])
        assert not torch.equal(enc["state_dict"][w], model[f"encoder.{w}"])
        assert not torch.equal(enc["state_dict"][w], init_w)
        assert model["dino_center"].abs().sum() > 0
    if name == "g2d":
        from cxrbench.models.unet import UNetDecoder

        dec = UNetDecoder(**pre.full_state["decoder_kwargs"])
        dec.load_state_dict(pre.full_state["decoder"])


def test_random_export_is_seeded(tmp_path, store, tiny_params):
    a = run_pretrain("random", dict(tiny_params["random"]), ENGINE, store, tmp_path / "a", seed=1)
    run_pretrain("random", dict(tiny_params["random"]), ENGINE, store, tmp_path / "b", seed=1)
    run_pretrain("random", dict(tiny_params["random"]), ENGINE, store, tmp_path / "c", seed=2)
    sd = {k: torch.load(tmp_path / k / "encoder.pt", weights_only=False)["state_dict"] for k in "abc"}
    w = "conv1.weight"
    assert torch.equal(sd["a"][w], sd["b"][w]) and not torch.equal(sd["a"][w], sd["c"][w])
    assert a["steps"] == 0 and a["parameters"]["model"]["trainable"] == a["parameters"]["encoder"]["total"]


def test_encoder_only_load_skips_the_full_model(tmp_path, tiny_params, corpus):
    from cxrbench.pretrain import export, load_pretrained
    from cxrbench.registry import METHODS

    params = {**tiny_params["convirt"], "seed": 0}
    module = METHODS.get("convirt")(params).build(corpus=corpus)
    export(module, "convirt", params, tmp_path)
    light = load_pretrained(tmp_path, full=False)
    full = load_pretrained(tmp_path)
    assert light.vl is None and full.vl is not None  # the text tower is only built when asked for
    for a, b in zip(light.backbone.state_dict().values(), full.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)
