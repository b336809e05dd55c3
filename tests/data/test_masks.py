"""Mask rendering against hand-made arrays (pixel-centre convention, see cxrbench.data.masks)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.data.masks import boxes_mask, render_shapes


def test_rect_integer_corners():
    out = render_shapes([{"type": "rect", "xyxy": [1, 2, 4, 5]}], 6, 6)
    expected = np.zeros((6, 6), np.uint8)
    expected[2:5, 1:4] = 1
    np.testing.assert_array_equal(out, expected)


def test_rect_fractional_corners_use_pixel_centres():
    # centres 0.5 < 0.6 (out), 1.5 (in), 2.5 (not < 2.5: out); rows: 0.5, 1.5 in [0.4, 1.6)
    out = render_shapes([{"type": "rect", "xyxy": [0.6, 0.4, 2.5, 1.6]}], 3, 4)
    expected = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_ellipse_inscribed_in_box():
    # cx=3, cy=2, a=3, b=2: rows 0/3 have (dy/b)^2 = 0.5625 -> |dx/a| <= 0.66 -> cols 1..4; rows 1/2 all cols
    out = render_shapes([{"type": "ellipse", "xyxy": [0, 0, 6, 4]}], 4, 6)
    expected = np.array(
        [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], np.uint8
    )
    np.testing.assert_array_equal(out, expected)


def test_polygon_triangle():
    # triangle (0,0) (5,0) (0,4): centre inside iff 4(c+.5) + 5(r+.5) < 20  <=>  4c + 5r < 15.5
    out = render_shapes([{"type": "polygon", "xy": [0, 0, 5, 0, 0, 4]}], 5, 6)
    r, c = np.mgrid[0:5, 0:6]
    expected = (4 * c + 5 * r < 15.5).astype(np.uint8)
    assert expected.sum() == 10
    np.testing.assert_array_equal(out, expected)


def test_rle_column_major():
    # width 3, height 2: "1 2" sets flat (column-major) positions 1, 2 -> (row 1, col 0), (row 0, col 1)
    out = render_shapes([{"type": "rle", "rle": "1 2"}], 2, 3)
    np.testing.assert_array_equal(out, [[0, 1, 0], [1, 0, 0]])
    assert render_shapes([{"type": "rle", "rle": "-1"}], 2, 3).sum() == 0


def test_rle_roundtrip_with_encoder():
    from cxrbench.data.rle import rle_encode

    mask = np.zeros((7, 5), np.uint8)
    mask[1:4, 2] = 1
    mask[6, 0:5] = 1
    np.testing.assert_array_equal(render_shapes([{"type": "rle", "rle": rle_encode(mask)}], 7, 5), mask)


def test_union_of_shapes_and_empty():
    shapes = [{"type": "rect", "xyxy": [0, 0, 1, 1]}, {"type": "rect", "xyxy": [2, 2, 3, 3]}]
    out = render_shapes(shapes, 3, 3)
    np.testing.assert_array_equal(out, np.diag([1, 0, 1]).astype(np.uint8))
    assert render_shapes(None, 2, 2).sum() == 0 and render_shapes([], 2, 2).dtype == np.uint8


def test_boxes_filled_like_rsna():
    out = boxes_mask([[0.0, 0.0, 2.0, 1.0], [3.0, 2.0, 10.0, 9.0]], 4, 5)
    expected = np.zeros((4, 5), np.uint8)
    expected[0, 0:2] = 1
    expected[2:4, 3:5] = 1  # clipped at the image border
    np.testing.assert_array_equal(out, expected)


def test_unknown_shape_type_and_bad_polygon():
    with pytest.raises(ValueError, match="circle"):
        render_shapes([{"type": "circle"}], 2, 2)
    with pytest.raises(ValueError, match="polygon"):
        render_shapes([{"type": "polygon", "xy": [0, 0, 1, 1]}], 2, 2)
