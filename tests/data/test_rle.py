import numpy as np
import pytest

from cxrbench.data.rle import rle_check, rle_decode, rle_decode_union, rle_encode

# (H=3, W=4); column-major flat = 0,0,0, 1,1,0, 0,0,0, 0,1,1 -> runs (start 3, len 2), (start 10, len 2)
MASK = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=np.uint8)
HAND = "3 2 5 2"


def test_hand_computed_encode_and_decode():
    assert rle_encode(MASK) == HAND
    out = rle_decode(HAND, width=4, height=3)
    assert out.dtype == np.uint8 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, MASK)


def test_empty_and_whitespace_variants():
    assert rle_encode(np.zeros((5, 7), np.uint8)) == "-1"
    for s in ("-1", " -1", "-1 "):
        assert rle_decode(s, 7, 5).sum() == 0
    np.testing.assert_array_equal(rle_decode(" " + HAND, 4, 3), MASK)


def test_full_mask_and_first_pixel():
    full = np.ones((2, 3), np.uint8)
    assert rle_encode(full) == "0 6"
    np.testing.assert_array_equal(rle_decode("0 6", 3, 2), full)
    one = np.zeros((4, 4), np.uint8)
    one[0, 0] = 1
    assert rle_encode(one) == "0 1"


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = 17, 23
    mask = (rng.random((h, w)) < 0.3).astype(np.uint8)
    s = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(s, w, h), mask)
    assert rle_encode(rle_decode(s, w, h)) == s
    assert rle_check(s) == len(s.split()) // 2


def test_union_ors_instances():
    a, b = np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8)
    a[0, 1] = 1
    b[2, 3] = b[0, 1] = 1
    out = rle_decode_union([rle_encode(a), rle_encode(b)], 4, 3)
    np.testing.assert_array_equal(out, a | b)


@pytest.mark.parametrize(
    "bad, word",
    [
        ("3 2 5", "odd"),
        ("3 -2", "negative"),
        ("3 2 5 3", "past the end"),
        ("3 x", "not an integer"),
        ("3 0", "length 0"),
    ],
)
def test_malformed_rle_names_problem(bad, word):
    with pytest.raises(ValueError, match=word):
        rle_decode(bad, 4, 3)
