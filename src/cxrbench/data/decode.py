"""Decode + resize the images of a preparation in resumable chunks, over a process pool, with live progress.

Work lives in a partial directory OUTSIDE the output store (``<out>.partial/``, which Snakemake does not delete
when it reruns the ``prepare`` rule): ``images.npy`` / ``masks.npy`` memmaps of every row to decode, and one done
marker ``chunks/<k>.json`` per chunk of ``chunk_size`` rows holding its geometry, its failures and a fingerprint of
its rows (paths, shapes, boxes). A rerun reuses every chunk whose fingerprint matches, so a killed preparation
resumes, and fixing one row of a label table recomputes only its chunk.

Pool workers die with their parent, SIGKILL included: each sets ``PR_SET_PDEATHSIG`` (Linux) and, everywhere,
checks before each image that its parent is still the process that started it. Each decoded image is reported to
the parent through a queue, so progress advances per image with any number of workers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from cxrbench.data.images import ImageDecodeError, load_image, resize_mask, resize_pad
from cxrbench.data.masks import boxes_mask, render_shapes

_PARENT: int | None = None  # set in pool workers: the pid of the preparing process
_TICKS: Any = None  # set in pool workers: the progress queue


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of decode rows [start, stop) (picklable for worker processes)."""

    k: int
    start: int
    stop: int
    fingerprint: str
    paths: list[str]
    shapes: list[Any]
    boxes: list[Any]
    size: int
    padding: str
    masks: bool
    partial: str


def _as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def chunk_fingerprint(paths: list[str], shapes: list, boxes: list, masks: bool) -> str:
    rows = [paths, shapes, boxes] if masks else [paths]
    return hashlib.sha256(json.dumps(rows, default=_as_list).encode()).hexdigest()


def open_partial(partial: Path, n: int, size: int, masks: bool, chunk_size: int) -> None:
    """Reuse ``partial`` if it was made for the same plan (rows, size, masks, chunk size), else start it anew."""
    plan = {"n": n, "size": size, "masks": masks, "chunk_size": chunk_size}
    arrays = [partial / "images.npy"] + ([partial / "masks.npy"] if masks else [])
    plan_path = partial / "plan.json"
    if plan_path.exists() and all(p.exists() for p in arrays):
        if json.loads(plan_path.read_text()) == plan:
            return
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "chunks").mkdir(parents=True)
    for path in arrays:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()
    atomic_write(plan_path, json.dumps(plan))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _decode_one(job: ChunkJob, i: int, images: np.ndarray, masks: np.ndarray | None) -> list:
    """Decode row ``job.start + i`` into the memmaps -> [orig_h, orig_w, scale, pad_x, pad_y, has_mask]."""
    img = load_image(job.paths[i])
    images[job.start + i], g = resize_pad(img, job.size, job.padding)
    has_mask = False
    if masks is not None:
        try:
            shapes = job.shapes[i]
            if shapes is not None and len(shapes):
                mask = render_shapes(shapes, g.orig_h, g.orig_w)
            else:
                mask = boxes_mask(job.boxes[i], g.orig_h, g.orig_w)
        except ValueError as err:
            raise MaskError(str(err)) from err
        has_mask = bool(mask.any())
        masks[job.start + i] = resize_mask(mask, g)
    return [g.orig_h, g.orig_w, g.scale, g.pad_x, g.pad_y, has_mask]


class MaskError(ValueError):
    """The row's shapes do not fit its image (e.g. RLE runs past the last pixel)."""


def _alive() -> None:
    """In a pool worker: exit at once when the preparing process has gone (its pid is no longer our parent)."""
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)


def decode_chunk(job: ChunkJob, tick: Any = None) -> int:
    """Decode one chunk into the partial memmaps and write its done marker; returns the number of rows."""
    partial = Path(job.partial)
    images = np.load(partial / "images.npy", mmap_mode="r+")
    masks = np.load(partial / "masks.npy", mmap_mode="r+") if job.masks else None
    geometry, failed = [], []
    for i in range(job.stop - job.start):
        _alive()
        try:
            geometry.append(_decode_one(job, i, images, masks))
        except (ImageDecodeError, MaskError) as err:
            kind = "mask_error" if isinstance(err, MaskError) else "undecodable"
            failed.append({"i": i, "kind": kind, "reason": str(err).replace(job.paths[i], "<image>")})
            geometry.append([0, 0, 0.0, 0, 0, False])
        (tick or _tick)(1)
    images.flush()
    if masks is not None:
        masks.flush()
    del images, masks
    marker = {"k": job.k, "start": job.start, "stop": job.stop, "fingerprint": job.fingerprint,
              "geometry": geometry, "failed": failed}
    atomic_write(partial / "chunks" / f"{job.k}.json", json.dumps(marker))
    return job.stop - job.start


def _tick(n: int) -> None:
    if _TICKS is not None:
        _TICKS.put(n)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(parent: int, ticks: Any) -> None:
    global _PARENT, _TICKS
    _PARENT, _TICKS = parent, ticks
    _die_with_parent()
    _alive()  # the parent may have died before prctl took effect
    import cv2

    cv2.setNumThreads(1)


def run_chunks(jobs: list[ChunkJob], workers: int, progress: Progress) -> None:
    """Run ``jobs`` in-process (workers <= 1) or over a process pool; the first failure cancels the rest."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            decode_chunk(job, progress.update)
        return
    ctx = multiprocessing.get_context()
    ticks = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(), ticks)) as pool:
        pending = {pool.submit(decode_chunk, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            _drain(ticks, progress)
            for fut in done:
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
        _drain(ticks, progress)


def _drain(ticks: Any, progress: Progress) -> None:
    while True:
        try:
            progress.update(ticks.get_nowait())
        except queue.Empty:
            return


class Progress:
    """Per-image progress: a tqdm bar on a terminal, else one log line every ``every`` percent (and at the end)."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, stream: IO[str], every: int = 10) -> None:
        self.total, self.done, self.desc, self.stream, self.every = total, initial, desc, stream, every
        self.enabled, self.t0, self.start = enabled and total > 0, time.perf_counter(), initial
        self.last = self._step(initial)
        self.bar = None
        if self.enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc, file=stream)
        elif self.enabled and initial:
            self._line()

    def _step(self, done: int) -> int:
        return int(100 * done / self.total) // self.every

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif self._step(self.done) > self.last:
            self.last = self._step(self.done)
            self._line()

    def _line(self) -> None:
        seconds = time.perf_counter() - self.t0
        rate = (self.done - self.start) / seconds if seconds > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(f"{self.desc}: {100 * self.done // self.total:3d}% ({self.done}/{self.total} images, "
              f"{rate:.1f} img/s, ETA {eta:.0f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def collect(partial: Path, n_chunks: int) -> tuple[np.ndarray, list[dict]]:
    """Geometry (n, 6) float64 of all chunks and the failed rows [{"pos", "kind", "reason"}] from the markers."""
    rows, failed = [], []
    for k in range(n_chunks):
        marker = json.loads((partial / "chunks" / f"{k}.json").read_text())
        rows.extend(marker["geometry"])
        failed.extend({"pos": marker["start"] + f["i"], "kind": f["kind"], "reason": f["reason"]}
                      for f in marker["failed"])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6), failed


def decode_rows(rows: dict[str, list], partial: Path, cfg: dict[str, Any], stream: IO[str]) -> dict[str, Any]:
    """Decode ``rows`` ({"paths", "shapes", "boxes"}, absolute paths) into ``partial`` (resuming done chunks)."""
    paths, shapes, boxes = rows["paths"], rows["shapes"], rows["boxes"]
    n, cs = len(paths), cfg["chunk_size"]
    open_partial(partial, n, cfg["size"], cfg["masks"], cs)
    jobs, bounds = [], [(k, s, min(s + cs, n)) for k, s in enumerate(range(0, n, cs))]
    for k, s, e in bounds:
        fp = chunk_fingerprint(paths[s:e], shapes[s:e], boxes[s:e], cfg["masks"])
        marker = partial / "chunks" / f"{k}.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp:
            continue
        jobs.append(ChunkJob(k, s, e, fp, paths[s:e], shapes[s:e], boxes[s:e], cfg["size"], cfg["padding"],
                             cfg["masks"], str(partial)))
    todo = sum(j.stop - j.start for j in jobs)
    progress = Progress(n, n - todo, f"prepare {cfg['name']}", cfg["progress"], stream)
    t0 = time.perf_counter()
    try:
        run_chunks(jobs, cfg["workers"], progress)
    finally:
        progress.close()
    geometry, failed = collect(partial, len(bounds))
    return {"geometry": geometry, "failed": failed, "decoded": todo, "resumed_chunks": len(bounds) - len(jobs),
            "chunks": len(bounds), "seconds": time.perf_counter() - t0}
