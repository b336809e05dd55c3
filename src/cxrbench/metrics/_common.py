"""Small helpers shared by the metric modules."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any, *, dtype: Any = np.float64, name: str = "input") -> np.ndarray:
    """``x`` (numpy array, torch tensor, list) as a numpy array of ``dtype``; torch tensors are detached to
    CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        msg = f"{name}: cannot convert {type(x).__name__} to a numpy {np.dtype(dtype)} array"
        raise TypeError(msg) from err


def check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; expected equal")
