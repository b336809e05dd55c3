"""SIIM-ACR run-length encoding of binary masks.

Convention (the SIIM ``train-rle.csv``): the mask of shape (H, W) is flattened column-major
(``mask.T.flatten()``),
runs of ones are written as pairs ``gap length`` separated by spaces, where ``gap`` is counted from the END
of the
previous run (the first gap is the absolute start index). An empty mask is ``-1``.

Decoding: ``pos = 0; for gap, length: pos += gap; flat[pos:pos + length] = 1; pos += length``, then
``flat.reshape(W, H).T``. ``rle_encode(rle_decode(s, w, h)) == s`` for every canonical string (positive
lengths,
positive gaps between runs), which is what the real files contain.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

EMPTY = "-1"


def _pairs(rle: str) -> np.ndarray:
    """The (gap, length) pairs of ``rle`` as an int64 array (n, 2); syntax errors raise ``ValueError``."""
    text = rle.strip()
    if text == EMPTY or text == "":
        return np.zeros((0, 2), dtype=np.int64)
    tokens = text.split()
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise ValueError(f"RLE: token {bad!r} is not an integer") from None
    if len(values) % 2:
        raise ValueError(f"RLE: odd number of values ({len(values)}); expected 'gap length' pairs")
    if (values < 0).any():
        i = int(np.flatnonzero(values < 0)[0])
        raise ValueError(f"RLE: negative value {values[i]} at position {i}")
    pairs = values.reshape(-1, 2)
    if (pairs[:, 1] == 0).any():
        i = int(np.flatnonzero(pairs[:, 1] == 0)[0])
        raise ValueError(f"RLE: run {i} has length 0")
    return pairs


def rle_check(rle: str) -> int:
    """Validate the syntax of ``rle`` without knowing the image size; returns the number of runs."""
    return len(_pairs(rle))


def rle_decode(rle: str, width: int, height: int) -> np.ndarray:
    """Decode ``rle`` into a uint8 mask of shape (height, width) with values {0, 1}.

    Raises ``ValueError`` naming the problem for an odd count, a negative or non-integer value, a
    zero-length run,
    or a run past the end of the (width * height) image.
    """
    pairs = _pairs(rle)
    total = width * height
    flat = np.zeros(total, dtype=np.uint8)
    if len(pairs):
        starts = np.cumsum(pairs[:, 0] + np.concatenate([[0], pairs[:-1, 1]]))
        ends = starts + pairs[:, 1]
        if ends[-1] > total:
            raise ValueError(f"RLE: run ending at pixel {int(ends[-1])} is past the end of a {width}x{height} image")
        for s, e in zip(starts, ends, strict=True):
            flat[s:e] = 1
    return flat.reshape(width, height).T.copy()


def rle_decode_union(rles: Iterable[str], width: int, height: int) -> np.ndarray:
    """OR of several RLE strings (one SIIM row per instance) -> uint8 mask (height, width)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, width, height)
    return mask


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (H, W), nonzero = 1, as a SIIM RLE string; ``-1`` when the mask is empty."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected a 2-D mask (H, W), got shape {mask.shape}")
    flat = np.concatenate([[0], (mask.T.reshape(-1) != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    if len(edges) == 0:
        return EMPTY
    starts, ends = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], ends[:-1]])
    out = np.empty(2 * len(starts), dtype=np.int64)
    out[0::2], out[1::2] = gaps, ends - starts
    return " ".join(map(str, out.tolist()))
