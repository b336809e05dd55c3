"""``engine.ckpt_min_seconds``: a short run writes no checkpoint, trains to the same weights, and still writes its
curves (issue 10: a demo fine-tuning run paid ~4 s of its ~20 s writing ~134 MB checkpoints it then deleted)."""

from __future__ import annotations

import csv

import torch

from cxrbench.engine import fit
from tests.test_engine import Linear, Regression, cfg


def test_a_run_shorter_than_the_interval_writes_no_checkpoint(tmp_path):
    every, sparse = Linear(), Linear()
    ref = fit(every, Regression(), cfg(epochs=3, ckpt_every=1), tmp_path / "every", seed=0)
    got = fit(sparse, Regression(), cfg(epochs=3, ckpt_every=1, ckpt_min_seconds=3600), tmp_path / "sparse", seed=0)
    assert (tmp_path / "every" / "last.ckpt").is_file()
    assert not (tmp_path / "sparse" / "last.ckpt").exists()
    assert torch.equal(every.lin.weight, sparse.lin.weight) and got.history == ref.history
    with open(tmp_path / "sparse" / "curves.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [r["step"] for r in ref.history]


def test_the_interval_is_not_part_of_the_run_identity(tmp_path):
    """A checkpoint written without the interval is resumed by a run with it (a non-semantic key)."""
    first = Linear()
    fit(first, Regression(), cfg(epochs=2), tmp_path, seed=0)
    again = Linear()
    res = fit(again, Regression(), cfg(epochs=2, ckpt_min_seconds=3600), tmp_path, seed=0)
    assert res.steps == 8 and again.calls == 0 and torch.equal(first.lin.weight, again.lin.weight)
