"""The training engine: schedules, sampler, accumulation, clipping, bf16, NaN stop, early stopping, curves."""

import csv
import math

import pytest
import torch
from torch import nn

from cxrbench.engine import EngineConfig, fit, lr_at, wd_at
from cxrbench.engine.data import ResumableBatchSampler, epoch_permutation
from cxrbench.engine.state import load_checkpoint


class Regression(torch.utils.data.Dataset):
    """y = x . (0, 1, ..., 7) + 1 with fixed x (n, 8)."""

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.arange(8.0) + 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Linear(nn.Module):
    def __init__(self, nan_at: int | None = None, bad_grad_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 1)
        self.calls, self.nan_at, self.bad_grad_at = 0, nan_at, bad_grad_at
        self.dtypes: list[torch.dtype] = []

    def forward(self, b):
        self.calls += 1
        pred = self.lin(b["x"])
        self.dtypes.append(pred.dtype)
        mse = ((pred.float().squeeze(-1) - b["y"]) ** 2).mean()
        loss = mse + 0.0 * self.lin.bias.abs().sum()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        if self.calls == self.bad_grad_at:  # finite loss, infinite gradient: d sqrt(u)/du at u = 0
            loss = loss + torch.sqrt(self.lin.bias - self.lin.bias.detach()).sum()
        return {"loss": loss, "mse": mse, "half": 0.5 * mse}


def cfg(**kw) -> EngineConfig:
    base = {"epochs": 1, "batch_size": 8, "lr": 0.05, "optimizer": "sgd", "momentum": 0.0, "progress": False,
            "log_every": 1, "ckpt_every": 100}
    return EngineConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ schedules
def test_warmup_cosine_values():
    c = EngineConfig(lr=1.0, schedule="warmup_cosine", warmup_steps=2, min_lr=0.1)
    got = [lr_at(s, 10, c) for s in (0, 1, 2, 6, 10)]
    # warm-up 1/2, 2/2; then 0.1 + 0.9 * 0.5 (1 + cos(pi u / 8)) at u = 0, 4, 8
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1])
    assert lr_at(6, 10, c, base_lr=2.0) == pytest.approx(0.2 + 1.8 * 0.5)  # a group with twice the lr


def test_cosine_restarts_values():
    c = EngineConfig(lr=1.0, schedule="cosine_restarts", restart_every=4, min_lr=0.0)
    got = [lr_at(s, 100, c) for s in (0, 2, 3, 4, 5, 8)]
    assert got == pytest.approx([1.0, 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 1.0,
                                 0.5 * (1 + math.cos(math.pi / 4)), 1.0])
    assert lr_at(7, 100, EngineConfig(lr=1.0)) == 1.0  # constant


def test_weight_decay_schedule():
    c = EngineConfig(weight_decay=0.04, weight_decay_end=0.4)
    assert [wd_at(s, 10, c) for s in (0, 5, 10)] == pytest.approx([0.04, 0.22, 0.4])
    assert wd_at(3, 10, EngineConfig(weight_decay=0.05)) == 0.05


def test_engine_applies_the_schedule(tmp_path):
    c = cfg(schedule="warmup_cosine", warmup_steps=1, min_lr=0.01, batch_size=4, epochs=2)
    res = fit(Linear(), Regression(), c, tmp_path, seed=0)
    assert [r["lr"] for r in res.history] == pytest.approx([lr_at(s, 16, c) for s in range(16)])
    assert [r["step"] for r in res.history] == list(range(1, 17))
    assert [r["epoch"] for r in res.history] == [0] * 8 + [1] * 8


def test_config_validation():
    with pytest.raises(ValueError, match="engine.schedule = 'cosine'"):
        EngineConfig(schedule="cosine")
    with pytest.raises(KeyError, match=r"unknown engine parameter\(s\) \['lrr'\]"):
        EngineConfig.from_dict({"lrr": 1})
    assert EngineConfig.from_dict({"betas": [0.9, 0.98]}).betas == (0.9, 0.98)


# -------------------------------------------------------------------------------------------------- sampler
def test_sampler_shards_union_is_the_single_process_batch():
    single = list(ResumableBatchSampler(20, 4, seed=3))
    ranks = [list(ResumableBatchSampler(20, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 5 and all(len(b) == 4 for b in single)
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    assert sorted(i for b in single for i in b) == list(range(20))


def test_sampler_epochs_skip_and_partial_batches():
    s = ResumableBatchSampler(10, 4, seed=1)
    assert epoch_permutation(10, 1, 0) == epoch_permutation(10, 1, 0) != epoch_permutation(10, 1, 1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and len(e0) == 2  # drop_last: 10 // 4
    s.set_epoch(1, skip=1)
    assert list(s) == e1[1:]
    keep = ResumableBatchSampler(10, 2, seed=1, rank=1, world_size=2, drop_last=False)
    perm = epoch_permutation(10, 1, 0)
    assert list(keep) == [perm[2:4], perm[6:8], [perm[9]]]  # last global batch (8, 9) split one each


# ------------------------------------------------------------------------------------- optimisation values
def test_grad_accumulation_equals_big_batch(tmp_path):
    a, b = Linear(), Linear()
    fit(a, Regression(), cfg(batch_size=8, epochs=2), tmp_path / "a", seed=0)
    fit(b, Regression(), cfg(batch_size=4, grad_accum=2, epochs=2), tmp_path / "b", seed=0)
    assert torch.allclose(a.lin.weight, b.lin.weight, atol=1e-6) and a.calls * 2 == b.calls == 16
    assert not torch.allclose(a.lin.weight, Linear().lin.weight)


def test_clipping_bounds_the_update(tmp_path):
    m, start = Linear(), Linear().lin.weight.detach().clone()
    res = fit(m, Regression(), cfg(lr=1.0, clip_norm=0.5, max_steps=1), tmp_path, seed=0)
    b0 = Linear().lin.bias.detach()
    step = torch.cat([(m.lin.weight - start).flatten(), m.lin.bias - b0])
    assert res.history[0]["grad_norm"] > 0.5  # pre-clip norm is logged
    assert step.norm().item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.filterwarnings("ignore:precision. bf16 on a cpu")
def test_bf16_runs_close_to_fp32(tmp_path):
    a, b = Linear(), Linear()
    ra = fit(a, Regression(), cfg(max_steps=3), tmp_path / "a", seed=0)
    rb = fit(b, Regression(), cfg(max_steps=3, precision="bf16"), tmp_path / "b", seed=0)
    assert a.dtypes[0] == torch.float32 and b.dtypes[0] == torch.bfloat16
    assert b.lin.weight.dtype == torch.float32  # master weights stay fp32
    for x, y in zip(ra.history, rb.history, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-2)


@pytest.mark.parametrize(("flags", "want"), [("fpu sse avx2 fma", "fp32"), ("fpu avx2 avx512f avx512_bf16", "bf16"),
                                             ("fpu avx2 amx_tile amx_bf16", "bf16")])
def test_precision_auto_follows_the_cpu_flags(tmp_path, monkeypatch, flags, want):
    from cxrbench.engine import precision as P

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    flags_of = P.cpu_flags.__wrapped__  # the uncached reader, on a file written here
    monkeypatch.setattr(P, "cpu_flags", lambda: flags_of(str(info)))
    assert P.resolve_precision("auto", "cpu") == want
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    m = Linear()
    fit(m, Regression(), cfg(max_steps=1, precision="auto"), tmp_path / "run", seed=0)
    assert m.dtypes[0] == (torch.bfloat16 if want == "bf16" else torch.float32)
    rec = P.resolved_engine_params({"precision": "auto", "lr": 0.1}, device="cpu")
    assert rec == {"precision": want, "precision_requested": "auto", "lr": 0.1}


def test_explicit_bf16_on_an_emulating_cpu_warns_once(tmp_path, monkeypatch):
    from cxrbench.engine import precision as P

    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2"}))
    P._warn_emulated.cache_clear()
    with pytest.warns(RuntimeWarning, match="without native bf16") as record:
        assert P.resolve_precision("bf16", "cpu") == "bf16"
        assert P.resolve_precision("bf16", "cpu") == "bf16"
        fit(Linear(), Regression(), cfg(max_steps=1, precision="bf16"), tmp_path, seed=0)
    assert len([w for w in record if "native bf16" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="fp16")


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, kind):
    m = Linear(nan_at=5) if kind == "loss" else Linear(bad_grad_at=5)
    with pytest.raises(FloatingPointError, match="step 5 .*loss parts .*'mse'.*last good checkpoint .*step 4"):
        fit(m, Regression(64), cfg(ckpt_every=2), tmp_path, seed=0)
    ck = load_checkpoint(tmp_path / "last.ckpt")
    assert ck["step"] == 4
    assert torch.isfinite(ck["model"]["lin.weight"]).all()
    assert torch.equal(ck["model"]["lin.weight"], m.lin.weight.detach())  # the failing step changed nothing


# ---------------------------------------------------------------------------------- early stopping, files
def test_early_stopping_restores_best(tmp_path):
    scores, seen = iter([3.0, 2.0, 2.5, 2.6, 1.0]), []

    def val_fn(module):
        seen.append(module.lin.weight.detach().clone())
        assert not module.training
        return {"loss": next(scores), "other": 1.0}

    m = Linear()
    res = fit(m, Regression(), cfg(batch_size=16, epochs=5, patience=2), tmp_path, seed=0, val_fn=val_fn)
    assert len(seen) == 4 and res.steps == 8  # stopped after the 4th epoch (2 epochs without improvement)
    assert res.best_metric == 2.0 and res.best_path == str(tmp_path / "best.ckpt")
    assert torch.equal(m.lin.weight, seen[1])  # best epoch's weights loaded back
    assert load_checkpoint(tmp_path / "best.ckpt")["epoch"] == 1
    vals = [r for r in res.history if "val_loss" in r]
    assert [(r["epoch"], r["val_loss"]) for r in vals] == [(0, 3.0), (1, 2.0), (2, 2.5), (3, 2.6)]
    with pytest.raises(KeyError, match="engine.monitor = 'auc' is not among .*'loss'"):
        fit(Linear(), Regression(), cfg(monitor="auc"), tmp_path / "x", seed=0, val_fn=lambda m: {"loss": 1.0})


def test_curves_csv_and_idempotent_rerun(tmp_path, caplog):
    m = Linear()
    res = fit(m, Regression(), cfg(batch_size=8, epochs=2, log_every=3), tmp_path, seed=0)
    with open(tmp_path / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "mse", "half", "grad_norm"]
    assert [int(r["step"]) for r in rows] == [3, 6, 8]  # every 3 steps and the end
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in res.history])
    assert float(rows[0]["half"]) == pytest.approx(0.5 * float(rows[0]["mse"]))
    w = m.lin.weight.detach().clone()
    with caplog.at_level("WARNING", logger="cxrbench.engine.loop"):
        again = fit(m, Regression(), cfg(batch_size=8, epochs=2, log_every=3), tmp_path, seed=0)
    assert again.steps == 8 and again.history == res.history and torch.equal(m.lin.weight, w) and m.calls == 8
    assert "resuming at optimiser step 8 of 8" in caplog.text  # the log tells a resume from a fresh start
    caplog.clear()
    # another batch size: the state is stale, so the rerun starts fresh and equals a run in an empty directory
    other, fresh = Linear(), Linear()
    with caplog.at_level("WARNING", logger="cxrbench.engine.loop"):
        res4 = fit(other, Regression(), cfg(batch_size=4, epochs=2), tmp_path, seed=0)
    assert "stale training state" in caplog.text and "engine.batch_size" in caplog.text
    ref4 = fit(fresh, Regression(), cfg(batch_size=4, epochs=2), tmp_path / "fresh", seed=0)
    assert res4.steps == 16 and res4.history == ref4.history and torch.equal(other.lin.weight, fresh.lin.weight)
    assert (tmp_path / "curves.csv").read_text() == (tmp_path / "fresh" / "curves.csv").read_text()


def test_hooks_and_param_groups(tmp_path):
    class Hooked(Linear):
        def param_groups(self, lr, weight_decay):
            return [{"params": [self.lin.weight], "lr": lr * 2}, {"params": [self.lin.bias], "weight_decay": 0.0}]

        def on_step_end(self, step, total):
            self.ends.append((step, total))

    m = Hooked()
    m.ends = []
    b0 = m.lin.bias.detach().clone()
    res = fit(m, Regression(), cfg(max_steps=3, lr=0.05), tmp_path, seed=0)
    assert m.ends == [(1, 3), (2, 3), (3, 3)]
    assert res.history[0]["lr"] == pytest.approx(0.1)  # the first group's own lr
    assert not torch.equal(m.lin.bias, b0)


class FrozenPlusHead(Linear):
    """Linear with a frozen 'encoder' that the module declares constant (checkpoint_exclude)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.encoder.requires_grad_(False)

    def checkpoint_exclude(self):
        return ("encoder.",)


class SelfDeclaringFrozen(nn.Linear):
    def checkpoint_exclude(self):
        return ("weight", "bias")


class FrozenSubmodulePlusHead(Linear):
    """The same, declared by the frozen submodule itself (as the tasks' FrozenEncoder does)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = SelfDeclaringFrozen(8, 8).requires_grad_(False)


@pytest.mark.parametrize("FrozenPlusHead", [FrozenPlusHead, FrozenSubmodulePlusHead])
def test_checkpoint_exclude_leaves_frozen_state_out_and_resumes(tmp_path, FrozenPlusHead):  # noqa: N803
    ds = Regression()
    full = FrozenPlusHead()
    fit(full, ds, cfg(epochs=3), tmp_path / "full", seed=0, val_fn=lambda m: {"loss": 1.0})
    ck = load_checkpoint(tmp_path / "full" / "last.ckpt")
    assert set(ck["model"]) == {"lin.weight", "lin.bias"}
    assert set(load_checkpoint(tmp_path / "full" / "best.ckpt")["model"]) == {"lin.weight", "lin.bias"}
    again = FrozenPlusHead()
    fit(again, ds, cfg(epochs=3), tmp_path / "full", seed=0, val_fn=lambda m: {"loss": 1.0})  # loads, trains nothing
    assert torch.equal(again.lin.weight, full.lin.weight) and torch.equal(again.encoder.weight, full.encoder.weight)
    assert not torch.equal(again.lin.weight, FrozenPlusHead().lin.weight)
    broken = load_checkpoint(tmp_path / "full" / "last.ckpt")
    del broken["model"]["lin.bias"]
    torch.save(broken, tmp_path / "full" / "last.ckpt")
    with pytest.raises(RuntimeError, match="missing"):
        fit(FrozenPlusHead(), ds, cfg(epochs=3), tmp_path / "full", seed=0)
