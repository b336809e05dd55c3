import numpy as np
import pytest
import torch

from cxrbench.metrics.grounding import map_iou_dice, pointing_game, rasterize_boxes


def test_pointing_game_counts_argmax_inside_mask():
    gt = np.zeros((3, 4, 4), dtype=bool)
    gt[:, 1:3, 1:3] = True
    sim = np.zeros((3, 4, 4))
    sim[0, 1, 2] = 5.0  # inside
    sim[1, 0, 0] = 5.0  # outside
    sim[2] = 1.0  # constant map: first maximum (0, 0) is outside
    assert pointing_game(sim, gt) == pytest.approx(1 / 3)
    assert pointing_game(torch.from_numpy(sim), torch.from_numpy(gt)) == pytest.approx(1 / 3)


def test_pointing_game_native_map_points_at_the_best_cell_centre():
    gt = np.zeros((2, 64, 64), dtype=bool)
    gt[:, 10:30, 40:60] = True  # holds (16, 48), the centre of cell (0, 1) of a 2x2 grid, not the top edge
    sim = np.zeros((2, 2, 2))
    sim[0, 0, 1] = 1.0  # best cell (0, 1): centre (16, 48) inside
    sim[1, 1, 0] = 1.0  # best cell (1, 0): centre (48, 16) outside
    assert pointing_game(sim, gt) == pytest.approx(0.5)
    # the same maps upsampled bilinearly are flat over the outer half of each border cell: their first argmax is
    # row 0, outside the region; the native map is what the task passes
    up = torch.nn.functional.interpolate(torch.from_numpy(sim)[:, None], size=(64, 64), mode="bilinear")[:, 0]
    assert pointing_game(up, gt) == 0.0
    with pytest.raises(ValueError, match="finer than gt"):
        pointing_game(np.zeros((1, 8, 8)), np.ones((1, 4, 4), dtype=bool))


def test_map_iou_dice_minmax_threshold_convention():
    gt = np.zeros((1, 4, 4), dtype=bool)
    gt[0, :2, :2] = True  # 4 pixels
    sim = np.full((1, 4, 4), -1.0)  # normalised 0
    sim[0, :2, :2] = 3.0  # normalised 1
    sim[0, 2, 0] = 1.0  # normalised exactly 0.5 -> included (>=)
    out = map_iou_dice(sim, gt, threshold=0.5)
    assert out["IoU"] == pytest.approx(4 / 5)
    assert out["Dice"] == pytest.approx(2 * 4 / (5 + 4))
    assert map_iou_dice(sim, gt, threshold=0.6)["IoU"] == pytest.approx(1.0)


def test_empty_ground_truth_is_rejected():
    with pytest.raises(ValueError, match="positive images"):
        pointing_game(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool))


def test_rasterize_same_resolution_uses_pixel_centres():
    m = rasterize_boxes(np.array([[1.0, 2.0, 3.0, 5.0]]), (6, 6), (6, 6))
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:5, 1:3] = True
    np.testing.assert_array_equal(m, expected)
    assert not rasterize_boxes(np.zeros((0, 4)), (6, 6), (6, 6)).any()


def test_rasterize_then_resize_by_area_coverage():
    # 8x8 original, box covers columns 0..3 fully and rows 0..5 -> downsample to 4x4 (2x2 blocks)
    m = rasterize_boxes([[0.0, 0.0, 4.0, 6.0], [6.0, 6.0, 7.0, 7.0]], (8, 8), (4, 4))
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:3, 0:2] = True  # the 1-pixel box covers 1/4 of its block -> dropped at min_coverage 0.5
    np.testing.assert_array_equal(m, expected)
    m2 = rasterize_boxes([[6.0, 6.0, 7.0, 7.0]], (8, 8), (4, 4), min_coverage=0.25)
    assert m2[3, 3] and m2.sum() == 1
    # upsampling an 2x2 mask to 4x4 replicates pixels
    up = rasterize_boxes([[0.0, 0.0, 1.0, 1.0]], (2, 2), (4, 4))
    assert up[:2, :2].all() and up.sum() == 4
