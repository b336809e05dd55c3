"""Small deterministic file writers shared by the layout writers (byte-identical output for identical input)."""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, img8: np.ndarray, *, quality: int = 95) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as JPEG (by suffix .jpg/.jpeg) or PNG; parent dirs are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img8)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path, format="PNG")


def fmt(v: object) -> str:
    """CSV cell: NaN/None -> blank, floats as written by pandas (1.0, -1.0, 0.0, 12.5)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def csv_text(header: Sequence[str] | str, rows: Iterable[Sequence[object]]) -> str:
    """CSV text with ``\\n`` line ends; ``header`` given as a string is written verbatim."""
    buf = io.StringIO()
    if isinstance(header, str):
        buf.write(header + "\n")
    w = csv.writer(buf, lineterminator="\n")
    if not isinstance(header, str):
        w.writerow(header)
    for r in rows:
        w.writerow([fmt(v) for v in r])
    return buf.getvalue()


def write_text(path: Path, text: str, *, gz: bool = False) -> None:
    """Write ``text`` (UTF-8); ``gz`` writes a gzip file with a fixed header (no name, mtime 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    if gz:
        with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as z:
            z.write(data)
    else:
        path.write_bytes(data)


def hex_id(rng: np.random.Generator, n: int) -> str:
    """``n`` lowercase hex characters."""
    return "".join("0123456789abcdef"[int(i)] for i in rng.integers(0, 16, n))


def uuid_like(rng: np.random.Generator) -> str:
    """A UUID-shaped id (8-4-4-4-12 hex), like the RSNA patientIds."""
    return "-".join(hex_id(rng, n) for n in (8, 4, 4, 4, 12))


def fake_person(rng: np.random.Generator) -> dict[str, str]:
    """Planted identifiers that must never reach a prepared store: name, id and birth date."""
    first = ["Jane", "John", "Alex", "Maria", "Sam"][int(rng.integers(5))]
    tag = hex_id(rng, 8)
    return {"name": f"Doe^{first}_{tag}", "id": f"PID{tag.upper()}",
            "birth": f"19{int(rng.integers(20, 99)):02d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"}
