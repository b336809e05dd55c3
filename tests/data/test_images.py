"""Image loading and the store geometry: hand-computed resize/pad, box mapping, mask resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrbench.data.images import (
    ImageDecodeError,
    fit_geometry,
    load_image,
    map_boxes,
    resize_mask,
    resize_pad,
)


@pytest.mark.parametrize(
    ("h", "w", "size", "padding", "expected"),
    [
        (40, 20, 32, "center", (0.8, 32, 16, 0, 8)),
        (50, 100, 64, "center", (0.64, 32, 64, 16, 0)),
        (30, 100, 64, "center", (0.64, 19, 64, 22, 0)),  # 19.2 -> 19 rows, (64 - 19) // 2 = 22
        (30, 100, 64, "topleft", (0.64, 19, 64, 0, 0)),
        (16, 16, 64, "center", (4.0, 64, 64, 0, 0)),
    ],
)
def test_fit_geometry(h, w, size, padding, expected):
    g = fit_geometry(h, w, size, padding)
    assert (g.scale, g.new_h, g.new_w, g.pad_y, g.pad_x) == pytest.approx(expected)


def test_fit_geometry_rejects_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        fit_geometry(10, 10, 8, "middle")


def test_resize_pad_constant_image_center():
    out, g = resize_pad(np.full((40, 20), 0.5, np.float32), 32)
    assert out.dtype == np.uint8 and out.shape == (32, 32)
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()
    assert (out[:, 8:24] == 128).all()  # rint(127.5) = 128


def test_resize_pad_topleft_and_brightest_pixel_does_not_wrap():
    out, _ = resize_pad(np.ones((20, 40), np.float32), 16, "topleft")
    assert (out[:8] == 255).all() and (out[8:] == 0).all()


def test_box_mapping_matches_image_content():
    # 50 x 100 image -> 64 store: scale 0.64, new 32 x 64, pad_x 16; white block on the box x 10..20, y 20..40
    img = np.zeros((100, 50), np.float32)
    img[20:40, 10:20] = 1.0
    out, g = resize_pad(img, 64)
    box = map_boxes(np.array([[10, 20, 20, 40]]), g)
    np.testing.assert_allclose(box, [[22.4, 12.8, 28.8, 25.6]], atol=1e-5)
    assert (out[13:25, 23:28] == 255).all()  # store pixels fully inside the mapped box
    outside = np.ones_like(out, bool)
    outside[12:26, 22:29] = False  # pixels touching the box
    assert (out[outside] == 0).all()
    # and back: (x' - pad) / scale
    back = (box[0] - [g.pad_x, g.pad_y, g.pad_x, g.pad_y]) / g.scale
    np.testing.assert_allclose(back, [10, 20, 20, 40], atol=1e-4)


def test_map_boxes_clips_to_store_and_keeps_empty():
    g = fit_geometry(10, 10, 20)
    np.testing.assert_allclose(map_boxes([[-1, 0, 12, 5]], g), [[0, 0, 20, 10]])
    assert map_boxes(np.zeros((0, 4)), g).shape == (0, 4)


def test_resize_mask_nearest_same_geometry():
    mask = np.zeros((40, 20), np.uint8)
    mask[10:20, 5:10] = 1  # scale 0.8 -> rows 8..16, cols 4..8, then pad_x 8
    g = fit_geometry(40, 20, 32)
    out = resize_mask(mask, g)
    assert set(np.unique(out)) == {0, 1}
    expected = np.zeros((32, 32), np.uint8)
    expected[8:16, 12:16] = 1
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="does not match"):
        resize_mask(np.zeros((3, 3), np.uint8), g)


def test_upscaling_small_image():
    out, g = resize_pad(np.ones((2, 4), np.float32), 8)
    assert g.scale == 2.0 and (g.new_h, g.new_w, g.pad_y) == (4, 8, 2)
    assert (out[2:6] == 255).all() and (out[:2] == 0).all() and (out[6:] == 0).all()


def test_load_png_8_and_16_bit(tmp_path):
    a8 = np.array([[0, 51, 255]], np.uint8)
    Image.fromarray(a8).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), a8 / 255.0, atol=1e-7)
    a16 = np.array([[0, 1000, 65535]], np.uint16)
    Image.fromarray(a16).save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a16 / 65535.0, atol=1e-6)


def test_load_rgb_and_rgba_to_luminance(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = np.array([[76, 150, 29, 18]]) / 255.0  # PIL L = (299 R + 587 G + 114 B) / 1000, rounded
    np.testing.assert_allclose(load_image(tmp_path / "c.png"), expected, atol=1 / 255)
    rgba = np.concatenate([rgb, np.full((1, 4, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "d.png")
    np.testing.assert_allclose(load_image(tmp_path / "d.png"), expected, atol=1 / 255)


def test_load_jpeg(tmp_path):
    arr = np.full((8, 8), 100, np.uint8)
    Image.fromarray(arr).save(tmp_path / "e.jpg", quality=100)
    np.testing.assert_allclose(load_image(tmp_path / "e.jpg"), arr / 255.0, atol=1 / 255)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "f.png")
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")
