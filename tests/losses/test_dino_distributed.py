"""Teacher centre and Sinkhorn-Knopp reduced across processes (gloo, CPU, 2 forked processes) equal one process
holding the whole batch, and both equal DINOv2's formulas re-derived here in numpy on the whole batch."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrbench.losses import sinkhorn_knopp, update_center

K, TAU, MOM = 6, 0.07, 0.9


def _data():
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(8, K, generator=g)  # 2 processes x 4 CLS logits
    patches = torch.randn(3, K, generator=g)  # masked-patch logits: 3 on process 0, none on process 1
    return cls, patches, torch.randn(1, K, generator=g)


def _np_center(c0, rows):
    return MOM * c0 + (1 - MOM) * rows.mean(0, keepdims=True)


def _np_sinkhorn(logits, tau, iters=3):
    """DINOv2 ``sinkhorn_knopp_teacher`` on one process, in float64 numpy."""
    q = np.exp(logits / tau).T  # (K, B)
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(1, keepdims=True) / k
        q = q / q.sum(0, keepdims=True) / b
    return (q * b).T


def _worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cls, patches, c0 = _data()
        mine = cls.chunk(world)[rank]
        mine_p = patches if rank == 0 else patches[:0]
        out = {
            "center": update_center(c0, mine, momentum=MOM),
            "ibot_center": update_center(c0, mine_p, momentum=MOM),
            "sk": sinkhorn_knopp(mine, temperature=TAU),
            "sk_patches": sinkhorn_knopp(mine_p, temperature=TAU),
        }
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("dist"))
    mp.start_processes(_worker, args=(2, tmp), nprocs=2, start_method="fork")
    return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]


def test_center_reduced_over_processes_equals_one_process(two_processes):
    cls, patches, c0 = _data()
    want = _np_center(c0.double().numpy(), cls.double().numpy())
    single = update_center(c0, cls, momentum=MOM)
    for out in two_processes:
        np.testing.assert_allclose(out["center"].numpy(), want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out["center"].numpy(), single.numpy(), rtol=1e-6, atol=1e-7)
    # uneven masked-patch counts (3 and 0): the mean over all 3 patches, on both processes
    want_p = _np_center(c0.double().numpy(), patches.double().numpy())
    for out in two_processes:
        np.testing.assert_allclose(out["ibot_center"].numpy(), want_p, rtol=1e-6, atol=1e-7)


def test_sinkhorn_reduced_over_processes_equals_one_process(two_processes):
    cls, patches, _ = _data()
    want = _np_sinkhorn(cls.double().numpy(), TAU)
    got = torch.cat([out["sk"] for out in two_processes])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), sinkhorn_knopp(cls, temperature=TAU).numpy(), rtol=1e-5, atol=1e-7)
    assert two_processes[1]["sk_patches"].shape == (0, K)
    np.testing.assert_allclose(two_processes[0]["sk_patches"].numpy(), _np_sinkhorn(patches.double().numpy(), TAU),
                               rtol=1e-4, atol=1e-6)
    # per-process Sinkhorn (no reduction) differs: the assignment is balanced over the global batch
    assert not torch.allclose(got, torch.cat([sinkhorn_knopp(c, temperature=TAU) for c in cls.chunk(2)]), atol=1e-3)


def test_single_process_matches_dinov2_and_keeps_centre_without_rows():
    cls, _, c0 = _data()
    np.testing.assert_allclose(sinkhorn_knopp(cls, temperature=TAU).numpy(), _np_sinkhorn(cls.double().numpy(), TAU),
                               rtol=1e-4, atol=1e-6)
    assert torch.equal(update_center(c0, cls[:0], momentum=MOM), c0)
    assert sinkhorn_knopp(cls[:0], temperature=TAU).shape == (0, K)
