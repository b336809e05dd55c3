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


def test_a_short_run_writes_its_files_once_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    """Per epoch a short run pays no file writes: curves.csv once at the end, best.ckpt never (the best epoch's
    weights are held in memory and still loaded back); with checkpoints, best.ckpt lands beside last.ckpt."""
    from cxrbench.engine import loop, state

    writes: list[str] = []
    real = state.atomic_write_bytes

    def counting(path, data, **kw):
        writes.append(path.name)
        real(path, data, **kw)

    monkeypatch.setattr(state, "atomic_write_bytes", counting)
    scores = iter([3.0, 1.0, 2.0, 2.5, 2.6, 2.7])
    seen = []

    def val_fn(module):
        seen.append(module.lin.weight.detach().clone())
        return {"loss": next(scores)}

    m = Linear()
    res = fit(m, Regression(), cfg(epochs=6, ckpt_min_seconds=3600, log_every=1), tmp_path / "short", seed=0,
              val_fn=val_fn)
    assert writes == ["curves.csv"] and res.best_path is None
    assert torch.equal(m.lin.weight, seen[1]) and res.best_metric == 1.0  # epoch 1's weights, from memory
    writes.clear()
    scores = iter([3.0, 1.0, 2.0, 2.5, 2.6, 2.7])
    seen.clear()
    m2 = Linear()
    res = fit(m2, Regression(), cfg(epochs=6, log_every=1), tmp_path / "every", seed=0, val_fn=val_fn)
    # epochs 0 and 1 improve: each best written once, just before that epoch's checkpoint; later epochs write none
    assert writes[:6] == ["best.ckpt", "last.ckpt", "curves.csv"] * 2 and writes.count("best.ckpt") == 2
    assert res.best_path == str(tmp_path / "every" / "best.ckpt")
    assert torch.load(tmp_path / "every" / "best.ckpt", weights_only=True)["epoch"] == 1
    assert torch.equal(m2.lin.weight, seen[1]) and loop.CURVES_SECONDS > 0
