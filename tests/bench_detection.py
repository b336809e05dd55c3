"""Benchmark: the detection head trained on cached C3-C5 levels vs streaming the images through the frozen encoder.

Run with ``pytest tests/bench_detection.py --benchmark-enable``. The benchmark table times one ``Detection.run`` whose
backbone levels come from the on-disk cache (a fresh task per round); the streaming baseline
(``feature_cache: false``: the same run with the frozen ResNet-18 in every training and validation batch) runs in each
round's untimed setup, under the same machine load. Both give the same mAP. ``extra_info`` holds both best-of-rounds
times and ``speedup`` = t_streaming / t_cached, which must exceed ``MIN_SPEEDUP``.
"""


import numpy as np
import pytest
import torch

from cxrbench.methods._base import Pretrained
from cxrbench.models.backbones import build_backbone
from cxrbench.registry import TASKS

EPOCHS, SIZE, N, ROUNDS, MIN_SPEEDUP = 4, 64, 96, 3, 1.5
PARAMS = {"datasets": ["rsna"], "image_size": SIZE, "neck_channels": 64, "head_widths": [32, 64, 128],
          "max_boxes": 10, "engine": {"epochs": EPOCHS, "batch_size": 16, "lr": 2e-3, "progress": False}}


class Store:
    """RSNA-like store: a bright box on two images in three, its box as the ground truth."""

    name, label_names, label_kind, size, masks = "rsna", ["Pneumonia"], "multilabel", SIZE, None
    meta = {"bench": "detection"}

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 60, size=(N, SIZE, SIZE)).astype(np.uint8)
        self._boxes = []
        for i in range(N):
            if i % 3:
                x, y = rng.integers(4, 30, size=2)
                self.images[i, y : y + 24, x : x + 16] = 220
                self._boxes.append(np.array([[x, y, x + 16, y + 24]], np.float32))
            else:
                self._boxes.append(np.zeros((0, 4), np.float32))
        self.split = np.array(["train", "train", "valid", "test"] * (N // 4))

    def rows(self, split, fraction=100):
        return np.flatnonzero(self.split == split)

    def boxes(self, rows):
        return [self._boxes[int(r)] for r in rows]

    def labels(self, rows):  # (n, 1): an image with a box is positive (the content hash of the caches reads it)
        return np.array([[float(len(self._boxes[int(r)]) > 0)] for r in rows], np.float32)


@pytest.mark.benchmark
def test_bench_detection_level_cache_speedup(timed, benchmark, tmp_path):
    torch.manual_seed(0)
    pre = Pretrained("bench", build_backbone("resnet18"), SIZE, {"mean": 0.5, "std": 0.5})
    store = Store()
    cached_params = {**PARAMS, "cache_dir": str(tmp_path / "cache")}
    warm = TASKS.get("detection")(cached_params)
    warm.run(pre, store, 100, 0, tmp_path / "warm")  # fills the on-disk cache (one backbone pass per split)
    assert warm.cached and warm.cache.misses == 3
    runs = iter(range(10**6))
    t_cached, t_streamed, tasks, streamed = [], [], [], []

    def cached():
        tasks.append(TASKS.get("detection")(cached_params))
        return tasks[-1].run(pre, store, 100, 0, tmp_path / f"c{next(runs)}")

    def streaming():
        task = TASKS.get("detection")({**PARAMS, "feature_cache": False})
        streamed.append(task.run(pre, store, 100, 0, tmp_path / f"s{next(runs)}"))
        assert not task.cached

    metrics = benchmark.pedantic(timed(cached, t_cached), setup=timed(streaming, t_streamed), rounds=ROUNDS,
                                 warmup_rounds=1, iterations=1)
    c, s = min(t_cached[1:] or t_cached), min(t_streamed[1:] or t_streamed)
    benchmark.extra_info.update(epochs=EPOCHS, image_size=SIZE, n_train=len(store.rows("train")),
                                threads=torch.get_num_threads(), cached_ms=round(1e3 * c, 1),
                                streaming_ms=round(1e3 * s, 1), speedup=round(s / c, 2))
    assert all(t.cache.misses == 0 and t.cache.hits == 3 for t in tasks)  # every timed run read the cache
    assert metrics["mAP@strict"] == pytest.approx(streamed[-1]["mAP@strict"], abs=1e-6)  # same run either way
    assert s / c > MIN_SPEEDUP, f"level cache speed-up x{s / c:.2f} <= x{MIN_SPEEDUP}"
