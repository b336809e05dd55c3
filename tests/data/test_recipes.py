"""Input recipes (issue 15 item 1): a fixed hand-made image through each recipe against numpy, the recorded recipe,
RAD-DINO's recipe read from a preprocessor_config.json in its exact format, and named external entries (item 2)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrbench.data import recipes as R

ROOT = Path(__file__).resolve().parents[2]
RAD_DINO_MEAN, RAD_DINO_STD = 0.5307, 0.2583
#: microsoft/rad-dino's preprocessor_config.json (transformers BitImageProcessor), key for key
RAD_DINO_PROCESSOR = {
    "crop_size": {"height": 518, "width": 518}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [RAD_DINO_MEAN] * 3,
    "image_processor_type": "BitImageProcessor", "image_std": [RAD_DINO_STD] * 3, "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 518},
}


def _image() -> tuple[torch.Tensor, np.ndarray]:
    """An 8 x 8 store square holding a 4 x 8 content (rows 2..5, zero padding above and below); each content row
    constant, so resizing along x leaves values exact."""
    rows = np.array([0.2, 0.4, 0.6, 1.0], dtype=np.float32)
    img = np.zeros((8, 8), dtype=np.float32)
    img[2:6] = rows[:, None]
    return torch.from_numpy(img)[None, None], img


BOX = torch.tensor([[2, 0, 4, 8]])  # (top, left, height, width)


def _norm(a: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.stack([(a - mean) / std] * 3)


def test_longer_unit_is_the_store_square_normalised():
    x, img = _image()
    r = R.Recipe(size=8, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2))
    out = R.apply(x, r, BOX)[0].numpy()
    want = np.stack([(img - m) / s for m, s in ((0.5, 0.5), (0.4, 0.25), (0.3, 0.2))])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_rad_dino_recipe_centre_square_of_the_content_min_max_scaled():
    x, img = _image()
    r = R.Recipe(size=4, resize="shorter", crop="center", scale="minmax", mean=(RAD_DINO_MEAN,) * 3,
                 std=(RAD_DINO_STD,) * 3)
    content = img[2:6]
    scaled = (content - 0.2) / (1.0 - 0.2)  # min 0.2, max 1.0 over the content (not the zero padding)
    want = _norm(scaled[:, 2:6], RAD_DINO_MEAN, RAD_DINO_STD)  # shorter side 4: the centred 4 x 4 of the 4 x 8
    np.testing.assert_allclose(R.apply(x, r, BOX)[0].numpy(), want, rtol=0, atol=1e-6)


def test_stretch_squashes_the_content_to_the_square():
    x, img = _image()
    r = R.Recipe(size=4, resize="stretch", scale="unit", mean=(0.5,) * 3, std=(0.5,) * 3)
    want = _norm(img[2:6, :4], 0.5, 0.5)  # 4 x 8 -> 4 x 4: along x each row is constant, so its value stays
    np.testing.assert_allclose(R.apply(x, r, BOX)[0].numpy(), want, rtol=0, atol=1e-6)


def test_minmax_keeps_padding_at_zero_and_a_flat_image_at_zero():
    x, _ = _image()
    out = R.minmax(x + 0.1, BOX)
    assert torch.all(out[0, 0, :2] == 0) and out[0, 0, 2:6].min() == 0 and out[0, 0, 2:6].max() == 1
    assert torch.all(R.minmax(torch.full((1, 1, 4, 4), 0.3), R.whole(torch.zeros(1, 1, 4, 4))) == 0)


def test_bad_recipes_name_the_key():
    with pytest.raises(ValueError, match="input.resize"):
        R.Recipe(size=4, resize="fit")
    with pytest.raises(ValueError, match="crop 'center'"):
        R.Recipe(size=4, resize="shorter", crop="none")
    with pytest.raises(KeyError, match="unknown keys"):
        R.Recipe.from_params({"image_size": 4, "input": {"scal": "minmax"}})


def test_a_recipe_larger_than_the_store_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"518 .* 256 px"):
        R.check_store(R.Recipe(size=518), 256, "pretrain.methods.raddino")
    R.check_store(R.Recipe(size=224), 256)


def test_content_boxes_from_the_manifest_geometry():
    manifest = pd.DataFrame({"orig_h": [100, 80], "orig_w": [50, 80], "scale": [0.08, 0.1], "pad_x": [2, 0],
                             "pad_y": [0, 0]})
    store = SimpleNamespace(size=8, manifest=manifest)
    assert R.content_boxes(store, np.array([1, 0])).tolist() == [[0, 0, 8, 8], [0, 2, 8, 4]]


def test_rad_dino_processor_file_gives_the_presets_recipe(tmp_path):
    from cxrbench import presets

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PROCESSOR))
    got = R.from_hf_preprocessor(tmp_path / "preprocessor_config.json")
    want = presets.preset("raddino", None)
    assert got["image_size"] == want["crops"]["global_size"] == 518
    assert got["input"] == {k: v for k, v in want["input"].items() if k != "scale"}
    assert got["normalize"] == {"mean": [RAD_DINO_MEAN] * 3, "std": [RAD_DINO_STD] * 3}
    assert want["normalize"] == {"mean": RAD_DINO_MEAN, "std": RAD_DINO_STD}


def _hf_dir(tmp_path: Path, processor: dict | None) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=14, image_size=28)
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(tmp_path / "rad-dino")
    if processor is not None:
        (tmp_path / "rad-dino" / "preprocessor_config.json").write_text(json.dumps(processor))
    return tmp_path / "rad-dino"


def test_external_hf_dir_is_fed_with_its_processor_recipe_and_records_it(tmp_path):
    from cxrbench.methods.external import External
    from cxrbench.pretrain import export, load_pretrained

    params = {"checkpoint": str(_hf_dir(tmp_path, RAD_DINO_PROCESSOR)), "backbone": "vit_small_patch14",
              "backbone_kwargs": {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2},
              "input": {"scale": "minmax"}}
    module = External(params).build()
    assert module.image_size == 518
    want = {"size": 518, "resize": "shorter", "crop": "center", "scale": "minmax", "mean": [RAD_DINO_MEAN] * 3,
            "std": [RAD_DINO_STD] * 3}
    export(module, "external", params, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["recipe"] == want
    loaded = load_pretrained(tmp_path / "ckpt", full=False)
    assert {k: loaded.normalize[k] for k in ("resize", "crop", "scale")} == {"resize": "shorter", "crop": "center",
                                                                              "scale": "minmax"}
    explicit = External({**params, "image_size": 224, "normalize": {"mean": 0.5, "std": 0.5}}).build()
    assert explicit.image_size == 224 and explicit.normalize["mean"] == 0.5  # an explicit value wins


def test_external_without_processor_or_size_says_which_key(tmp_path):
    from cxrbench.methods.external import External

    params = {"checkpoint": str(_hf_dir(tmp_path, None)), "backbone": "vit_small_patch14",
              "backbone_kwargs": {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}}
    with pytest.raises(KeyError, match="external.image_size"):
        External(params).build()


def test_recipe_view_of_a_store_row_matches_numpy():
    from cxrbench.tasks._common import recipe_view

    x, img = _image()
    manifest = pd.DataFrame({"orig_h": [4], "orig_w": [8], "scale": [1.0], "pad_x": [0], "pad_y": [2]})
    store = SimpleNamespace(size=8, manifest=manifest)
    norm = {"mean": RAD_DINO_MEAN, "std": RAD_DINO_STD, "resize": "shorter", "crop": "center", "scale": "minmax"}
    out = recipe_view(store, np.array([0]), x, norm, size=4, crop_ratio=1.0)[0].numpy()
    want = _norm(((img[2:6] - 0.2) / 0.8)[:, 2:6], RAD_DINO_MEAN, RAD_DINO_STD)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_method_recipes_reach_the_pretraining_input():
    from cxrbench.methods._common import normalization

    rec = normalization({"normalize": {"mean": 0.5307, "std": 0.2583}, "input": {"resize": "shorter",
                                                                                 "crop": "center",
                                                                                 "scale": "minmax"}}, {})
    assert rec == {"mean": 0.5307, "std": 0.2583, "resize": "shorter", "crop": "center", "scale": "minmax"}
    assert normalization({}, {"mean": 0.0, "std": 1.0})["scale"] == "unit"


def test_released_weights_overlay_names_two_external_rows():
    """Item 2: rad_dino_hf and dinov2_base sit in one matrix, each its own entry of `external`, mapped to a row."""
    from cxrbench import config
    from cxrbench.report.published import published_rows

    overlay = yaml.safe_load((ROOT / "workflow" / "params" / "released_weights.yaml").read_text())
    p = config.validate_params(config.merge(config.load_params(ROOT / "workflow" / "params" / "paper.yaml"),
                                            overlay))
    a, b = config.method_params(p, "rad_dino_hf"), config.method_params(p, "dinov2_base")
    assert a["method"] == b["method"] == "external" and a["checkpoint"] != b["checkpoint"]
    assert (a["input"]["scale"], b["input"]["scale"]) == ("minmax", "unit")
    rows = published_rows(p["report"]["published_rows"])
    assert (rows["rad_dino_hf"], rows["dinov2_base"]) == ("RAD-DINO", "DINOv2")
    assert {"rad_dino_hf", "dinov2_base"} <= set(p["matrix"]["methods"])


def test_pretraining_input_cuts_the_recipes_region_by_row():
    """ImageInput (G2D / M-FLAG / ConVIRT) with the store's content boxes: RAD-DINO's region, min-max scaled, back
    at the store size (bilinear, half-pixel centres, edges clamped, derived here with np.interp)."""
    from cxrbench.methods._common import ImageInput, attach_content

    x, img = _image()
    recipe = {"mean": 0.5, "std": 0.5, "resize": "shorter", "crop": "center", "scale": "minmax"}
    inp = ImageInput(8, recipe, None, seed=0).eval()
    module = torch.nn.Module()
    module.input = inp
    attach_content(module, torch.tensor([[0, 0, 8, 8], [2, 0, 4, 8]]))
    view, net = inp(x, ids=torch.tensor([1]))
    rows = (img[2:6, 0] - 0.2) / 0.8  # the 4 x 4 region's rows after min-max (constant along x)
    src = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    want = np.repeat(np.interp(src, np.arange(4), rows)[:, None], 8, axis=1)
    np.testing.assert_allclose(view[0, 0].numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(net[0].numpy(), np.stack([(want - 0.5) / 0.5] * 3), rtol=0, atol=1e-6)
    whole_view, _ = inp(x)  # without rows: the whole square is the content (min-max over it, no crop)
    np.testing.assert_allclose(whole_view[0, 0].numpy(), img, rtol=0, atol=1e-6)


def test_the_runs_fingerprint_records_the_recipe(monkeypatch):
    """config.json of every run holds the fingerprint, and the fingerprint the recipe the encoder was fed with."""
    from cxrbench import evaluate, fingerprint

    monkeypatch.setattr(fingerprint, "data_hash", lambda store: "data")
    norm = {"mean": RAD_DINO_MEAN, "std": RAD_DINO_STD, "resize": "shorter", "crop": "center", "scale": "minmax"}
    pretrained = SimpleNamespace(backbone=torch.nn.Linear(2, 2), normalize=norm, image_size=518)
    fp = evaluate.run_fingerprint("linear", "chexpert", 1, 0, {"engine": {}}, None, pretrained, None)
    assert fp["input"] == {**norm, "size": 518}
