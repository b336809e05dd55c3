"""Throughput: preparation (images/s) and the training loader vs the step it feeds (loader must not bottleneck).

Run: ``pytest tests/data/bench_loader.py --benchmark-enable``. Numbers land in ``benchmark.extra_info``.
The step is a torchvision resnet18 (weights=None) forward + backward + SGD update on CPU at the same image size and
batch size as the loader; both are measured in the same process and interleaved (one step in the untimed setup of
each loader round), so the comparison holds on any machine, even a loaded one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrbench.data.prepare import prepare_dataset
from cxrbench.data.loader import ImageDataset, collate
from cxrbench.data.store import PreparedDataset

pytestmark = pytest.mark.benchmark
N_RAW, BATCH, LOADER_WORKERS, ROUNDS = 48, 16, 2, 3


@pytest.fixture(scope="module")
def raw_rsna(tmp_path_factory):
    gen = pytest.importorskip("cxrbench.data.synthetic")
    from cxrbench.registry import DATASETS

    if "rsna" not in DATASETS:
        pytest.skip("rsna reader not registered")
    root = tmp_path_factory.mktemp("bench")
    gen.generate(root, seed=0, sizes={"rsna": N_RAW}, image_size=512, datasets=["rsna"])
    return root / "rsna"


@pytest.fixture(scope="module")
def stores(raw_rsna, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_stores")
    for size in (64, 224):
        prepare_dataset("rsna", raw_rsna, root / str(size), size=size, workers=2, progress=False)
    return {size: PreparedDataset(root / str(size)) for size in (64, 224)}


def test_prepare_throughput(benchmark, raw_rsna, tmp_path):
    outs = iter(range(100))

    def run():
        return prepare_dataset("rsna", raw_rsna, tmp_path / str(next(outs)), size=224, workers=2, progress=False)

    summary = benchmark.pedantic(run, rounds=2, iterations=1)
    benchmark.extra_info.update(images=summary["n_images"], images_per_s=round(summary["images_per_s"], 1),
                                source="synthetic RSNA DICOMs 512 px (jpeg, raw8, mono1, 12/16-bit, j2k, rle)",
                                size=224, workers=2)
    assert summary["n_images"] == N_RAW and summary["images_per_s"] > 0


def _loader(store: PreparedDataset) -> DataLoader:
    rows = np.tile(store.rows("train"), 8)
    ds = ImageDataset(store, rows, fields=("image", "label"))
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=LOADER_WORKERS, collate_fn=collate,
                      drop_last=True, persistent_workers=False, generator=torch.Generator().manual_seed(0))


def _loader_images(store: PreparedDataset) -> int:
    """One epoch of the training loader (worker start-up included); returns the number of images delivered."""
    n = 0
    for batch in _loader(store):
        n += batch["image"].shape[0]
    return n


def _train_step(size: int):
    """A resnet18 (weights=None) forward + backward + SGD update on a (BATCH, 1, size, size) batch."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(BATCH, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(BATCH, 1)

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x.expand(-1, 3, -1, -1)), y)
        loss.backward()
        opt.step()

    return step


@pytest.mark.parametrize("size", [64, 224])
def test_loader_outpaces_training_step(timed, benchmark, stores, size):
    """Loader images/s (one epoch per round) vs training-step images/s (one step in each round's untimed setup, so
    both see the same machine load); best of the rounds for both."""
    store = stores[size]
    step = _train_step(size)
    step()  # warm-up outside the timings
    t_step, t_load = [], []
    n = benchmark.pedantic(timed(lambda: _loader_images(store), t_load), setup=timed(step, t_step),
                           rounds=ROUNDS, warmup_rounds=1, iterations=1)
    loader_ips, step_ips = n / min(t_load[1:] or t_load), BATCH / min(t_step[1:] or t_step)
    benchmark.extra_info.update(size=size, batch=BATCH, loader_workers=LOADER_WORKERS, images_per_epoch=n,
                                loader_images_per_s=round(loader_ips, 1), step_images_per_s=round(step_ips, 1),
                                loader_vs_step=round(loader_ips / step_ips, 2), torch_threads=torch.get_num_threads())
    assert n == len(store.rows("train")) * 8 // BATCH * BATCH
    assert loader_ips > step_ips, f"loader {loader_ips:.0f} img/s is slower than the step {step_ips:.0f} img/s"
