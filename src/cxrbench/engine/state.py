"""Checkpoints (atomic, with RNG states) and the training-curve CSV."""

from __future__ import annotations

import csv
import io
import os
import random
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (a kill never leaves half a file).
    ``durable``: fsync before the rename (a checkpoint survives a power cut); a training curve skips it (~5-10 ms
    per write on a network or overlay file system, paid once per epoch by hundreds of small runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read an engine checkpoint (tensors, numbers, strings and containers only: ``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"cannot read checkpoint {path}: {err}. Delete it to restart from scratch.") from err


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU, CUDA if initialised, numpy, Python) in a weights_only-safe form."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - legacy global RNG
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
             "python": _py_state_to_lists(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def find_generators(roots: dict[str, Any]) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute by the roots, by a name that is stable across processes:
    ``<root>.<submodule path>.<attr>`` for modules (each submodule scanned), ``<root>.<attr>`` for other objects,
    plus one level into plain attribute objects (an augmenter owning its generator: ``<...>.<attr>.<attr2>``)."""
    out: dict[str, torch.Generator] = {}
    for root, obj in roots.items():
        named = obj.named_modules() if isinstance(obj, torch.nn.Module) else [("", obj)]
        for name, part in named:
            _scan(f"{root}.{name}" if name else root, part, out, depth=1)
    return out


def _scan(prefix: str, obj: Any, out: dict[str, torch.Generator], depth: int) -> None:
    for attr, value in getattr(obj, "__dict__", {}).items():
        if isinstance(value, torch.Generator):
            out[f"{prefix}.{attr}"] = value
        elif depth > 0 and _plain_object(value):
            _scan(f"{prefix}.{attr}", value, out, depth - 1)


def _plain_object(value: Any) -> bool:
    """An instance of a user class with attributes (not a module, tensor, class, function or Python module)."""
    skip = (torch.nn.Module, torch.Tensor, type, types.ModuleType, types.FunctionType, types.MethodType)
    return hasattr(value, "__dict__") and not isinstance(value, skip)


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_lists(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def write_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows -> CSV (header = union of keys, first-seen order, ``step`` first); missing cells are empty."""
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    if "step" in cols:
        cols.insert(0, cols.pop(cols.index("step")))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode(), durable=False)
