"""Processes and partial work: SIGKILL of a preparing process (its pool workers die with it, the previous store is
untouched, the rerun resumes the finished chunks and equals a clean run, byte for byte), and progress per image."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

import cxrbench.data.decode as decode
from cxrbench.data.prepare import partial_dir, prepare_dataset
from tests.data.test_prepare import store_digest

KW = {"workers": 2, "chunk_size": 2, "progress": False, "fractions": (50, 100)}




@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    gen = pytest.importorskip("cxrbench.data.synthetic")
    root = tmp_path_factory.mktemp("procs")
    gen.generate(root, seed=3, sizes={"rsna": 16}, image_size=64, datasets=["rsna"])
    return root / "rsna"


def _slow_prepare(raw: Path, out: Path, size: int) -> None:
    """Child process body: prepare with a slowed decoder (the pool workers fork from here and inherit it)."""
    real = decode.load_image

    def slow(path):
        time.sleep(0.15)
        return real(path)

    decode.load_image = slow
    prepare_dataset("rsna", raw, out, size=size, **KW)


def _kill_mid_run(raw: Path, out: Path, size: int) -> list[psutil.Process]:
    """Start a slowed prepare in a forked child, SIGKILL it once two chunks are done; returns its pool workers."""
    child = multiprocessing.get_context("fork").Process(target=_slow_prepare, args=(raw, out, size))
    child.start()
    chunks, workers = partial_dir(out) / "chunks", []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (chunks.is_dir() and len(list(chunks.glob("*.json"))) >= 2):
        workers = psutil.Process(child.pid).children(recursive=True) or workers
        time.sleep(0.02)
    workers = psutil.Process(child.pid).children(recursive=True) or workers
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert len(list(chunks.glob("*.json"))) < 8, "the run finished before it could be killed"
    return workers


def test_sigkill_kills_workers_keeps_old_store_and_resumes(rsna, tmp_path):
    clean = tmp_path / "clean"
    prepare_dataset("rsna", rsna, clean, size=24, **{**KW, "workers": 1})
    out = tmp_path / "out"
    prepare_dataset("rsna", rsna, out, size=16, **{**KW, "workers": 1})  # the previous store
    before = store_digest(out)
    workers = _kill_mid_run(rsna, out, size=24)
    assert workers, "the pool never started"
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"pool workers outlived their parent: {alive}"
    assert store_digest(out) == before  # the killed rerun left the previous store exactly as it was
    summary = prepare_dataset("rsna", rsna, out, size=24, **{**KW, "workers": 1})
    assert summary["resumed_chunks"] >= 2 and summary["decoded"] <= 12
    assert store_digest(out) == store_digest(clean) and not partial_dir(out).exists()


def test_progress_advances_per_image_with_workers(rsna, tmp_path):
    stream = io.StringIO()  # not a terminal: a line every 10 %
    prepare_dataset("rsna", rsna, tmp_path / "out", size=16, **{**KW, "chunk_size": 8, "progress": True},
                    stream=stream)
    pcts = [int(m) for m in re.findall(r"prepare rsna:\s+(\d+)% \(", stream.getvalue())]
    # 16 images, 2 chunks of 8: per-chunk updates could print at most 2 lines; per image gives every 10 % step
    assert len(pcts) == 10 and [p // 10 for p in pcts] == list(range(1, 11)), pcts
    assert "img/s" in stream.getvalue() and "ETA" in stream.getvalue()
