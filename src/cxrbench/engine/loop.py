"""The one training loop: ``fit(module, train_set, cfg, out_dir, seed=...)``.

Per optimiser step: ``grad_accum`` micro-batches, each ``loss / grad_accum`` back-propagated (DDP gradient sync on
the last one only), optional ``module.on_after_backward(step, total)``, gradient norm (clipped to ``clip_norm``),
a non-finite loss or norm on any rank stops the run with :class:`FloatingPointError` before the optimiser touches
the weights, then the optimiser step with the scheduled lr / weight decay and ``module.on_step_end(step, total)``.
``out_dir/last.ckpt`` is written every ``ckpt_every`` steps, at every epoch end and at the end (each at most once per
``ckpt_min_seconds``); the best epoch's weights are kept in memory and written to ``best.ckpt`` just before the
checkpoint that follows them, so the two files on disk always agree; ``curves.csv`` is rewritten at most every
``CURVES_SECONDS`` while training and always at the end. A rerun resumes
from it exactly (model, optimiser, step, position in the epoch, the global RNG states and the state of every
``torch.Generator`` held as an attribute by the module, its submodules or the dataset, history, early-stopping
state). Every checkpoint records the run's identity - the engine parameters that affect the result (precision and
device resolved), the seed, the dataset size and the caller's ``fingerprint`` of its inputs - and a rerun whose
identity differs never resumes: the stale last.ckpt, best.ckpt and curves.csv are removed (with a warning naming
what changed) and training starts fresh.
A module or any of its submodules may name state-dict prefixes that never change during the fit
(``checkpoint_exclude()``, e.g. the frozen encoder of a downstream head): they are left out of ``last.ckpt`` and
``best.ckpt``, and loading checks that nothing else is missing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.engine import dist as D
from cxrbench.engine.config import EngineConfig, FitResult, lr_at, wd_at
from cxrbench.engine.data import ResumableBatchSampler, make_loader, to_device
from cxrbench.engine.precision import resolve_precision
from cxrbench.engine.progress import progress
from cxrbench.engine.state import (
    atomic_torch_save,
    capture_rng,
    find_generators,
    load_checkpoint,
    restore_rng,
    write_curves,
)
from cxrbench.fingerprint import changed_keys, normalise

log = logging.getLogger(__name__)
#: engine parameters that never change what a fit computes (a changed value still resumes)
CURVES_SECONDS = 10.0  # curves.csv while training: live progress for a long fit, not a file per epoch of a short one
NON_SEMANTIC = ("progress", "ckpt_every", "ckpt_min_seconds", "num_workers")


def fit(module: nn.Module, train_set: Any, cfg: EngineConfig, out_dir: str | Path, *, seed: int,
        collate_fn: Any = None, val_fn: Any = None, resume: bool = True,
        fingerprint: Mapping[str, Any] | None = None) -> FitResult:
    """Train ``module`` (``module(batch) -> {"loss": scalar, **parts}``) on ``train_set`` and return the history.

    ``val_fn(module) -> {metric: float}`` runs at each epoch end on rank 0 (eval mode, no grad); with it,
    ``cfg.monitor`` / ``cfg.mode`` pick the best epoch (saved to ``out_dir/best.ckpt`` and loaded back at the
    end) and ``cfg.patience`` stops early. Under torchrun (RANK / WORLD_SIZE set) the module is wrapped in
    DistributedDataParallel and only rank 0 writes. ``fingerprint``: the caller's record of the inputs (parameters,
    data and code hashes), part of the identity a checkpoint must match to be resumed."""
    info, device = D.init_distributed(cfg.device)
    try:
        trainer = _Trainer(module, train_set, cfg, Path(out_dir), seed, collate_fn, val_fn, info, device)
        trainer.identity = trainer.make_identity(fingerprint)
        return trainer.run(resume)
    finally:
        D.cleanup(info)


class _Trainer:
    def __init__(self, module: nn.Module, train_set: Any, cfg: EngineConfig, out: Path, seed: int,
                 collate_fn: Any, val_fn: Any, info: D.DistInfo, device: torch.device) -> None:
        self.cfg, self.out, self.seed, self.val_fn, self.info, self.device = cfg, out, seed, val_fn, info, device
        self.raw = module.to(device)
        self.precision = resolve_precision(cfg.precision, device)  # auto -> bf16 only where native
        self.train_set = train_set
        self.sampler = ResumableBatchSampler(len(train_set), cfg.batch_size, seed, rank=info.rank,
                                             world_size=info.world_size, drop_last=cfg.drop_last)
        self.loader = make_loader(train_set, self.sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                                  seed=seed, pin_memory=device.type == "cuda")
        self.micro_per_epoch = len(self.sampler)
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.micro_per_epoch} batches per epoch < grad_accum={cfg.grad_accum}: "
                             "no optimiser step possible; lower batch_size or grad_accum")
        total = cfg.epochs * self.steps_per_epoch
        self.total = min(total, cfg.max_steps) if cfg.max_steps else total
        self.optimizer = self._make_optimizer()
        self.model: nn.Module = self.raw
        if info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.raw, device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        self.last, self.best_path = out / "last.ckpt", out / "best.ckpt"
        self._saved_at = time.monotonic()  # for cfg.ckpt_min_seconds
        self._curves_at = time.monotonic()  # for CURVES_SECONDS
        self._best: dict[str, Any] | None = None  # the best epoch's weights, in memory until the next checkpoint
        self._best_unsaved = False
        self.identity: dict[str, Any] = {}
        self._gens: dict[str, torch.Generator] | None = None
        self._last_loss: float | None = None
        self.s: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "acc": {},
                                  "acc_n": 0, "best_metric": None, "bad_epochs": 0, "done": False, "saved_step": 0}

    # ------------------------------------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if hasattr(self.raw, "param_groups"):
            groups = [dict(g) for g in self.raw.param_groups(cfg.lr, cfg.weight_decay)]
        else:
            groups = [{"params": list(self.raw.parameters())}]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
            g.setdefault("lr", cfg.lr)
            g.setdefault("weight_decay", cfg.weight_decay)
            g["base_lr"], g["base_wd"] = g["lr"], g["weight_decay"]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError(f"{type(self.raw).__name__} has no trainable parameters")
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def _set_schedule(self, step: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, self.total, self.cfg, g["base_lr"])
            if self.cfg.weight_decay_end is not None and g["base_wd"] > 0:
                g["weight_decay"] = wd_at(step, self.total, self.cfg)

    # ------------------------------------------------------------------------------------------------ state
    def make_identity(self, fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
        """What a checkpoint must record to be resumed by this fit (JSON-normalised)."""
        engine = {k: v for k, v in asdict(self.cfg).items() if k not in NON_SEMANTIC}
        engine.update(precision=self.precision, device=self.device.type)
        return normalise({"engine": engine, "seed": self.seed, "n_items": self.sampler.n,
                          "drop_last": self.cfg.drop_last, "inputs": dict(fingerprint or {})})

    def _generators(self) -> dict[str, torch.Generator]:
        """The generators whose states the checkpoint holds (found once: the objects never change in a fit)."""
        if self._gens is None:
            self._gens = find_generators({"module": self.raw, "dataset": self.train_set})
        return self._gens

    def _write_curves(self, force: bool = False) -> None:
        """curves.csv from the history (rank 0): at most every ``CURVES_SECONDS`` unless ``force``."""
        if self.info.is_main and (force or time.monotonic() - self._curves_at >= CURVES_SECONDS):
            write_curves(self.out / "curves.csv", self.s["history"])
            self._curves_at = time.monotonic()

    def _persist_best(self) -> None:
        """Write the in-memory best weights to best.ckpt (rank 0), before the checkpoint whose state they belong to."""
        if self._best_unsaved and self._best is not None and self.info.is_main:
            atomic_torch_save(self._best, self.best_path)
        self._best_unsaved = False

    def _save(self, path: Path, final: bool = False) -> None:
        if self._too_soon():
            self._write_curves(force=final)
            return
        self._saved_at = time.monotonic()
        self._persist_best()
        mine = {**capture_rng(), "generators": {k: g.get_state() for k, g in self._generators().items()}}
        rngs = D.gather(mine, self.info)  # every rank takes part; rank 0 writes
        if not self.info.is_main:
            return
        ckpt = {**self.s, "model": self._model_state(), "optimizer": self.optimizer.state_dict(), "rng": rngs,
                "seed": self.seed, "n_items": self.sampler.n, "world_size": self.info.world_size,
                "total_steps": self.total, "config": asdict(self.cfg), "fingerprint": self.identity}
        ckpt["saved_step"] = self.s["step"]
        atomic_torch_save(ckpt, path)
        self.s["saved_step"] = self.s["step"]
        self._write_curves(force=True)

    def _too_soon(self) -> bool:
        """``ckpt_min_seconds``: skip a checkpoint this soon after the last one (a kill then costs at most that much
        work; a short run writes none). Single process only: DDP ranks must agree on every save."""
        wait = float(self.cfg.ckpt_min_seconds)
        return wait > 0 and not self.info.enabled and time.monotonic() - self._saved_at < wait

    def _excluded(self) -> tuple[str, ...]:
        """State-dict prefixes declared constant by the module or any of its submodules (``checkpoint_exclude``)."""
        out: list[str] = []
        for name, module in self.raw.named_modules():
            hook = getattr(module, "checkpoint_exclude", None)
            if callable(hook):
                out += [f"{name}.{prefix}" if name else prefix for prefix in hook()]
        return tuple(out)

    def _model_state(self) -> dict[str, Any]:
        """The module's state dict without the prefixes it declares constant (a frozen encoder)."""
        state, skip = self.raw.state_dict(), self._excluded()
        return {k: v for k, v in state.items() if not k.startswith(skip)} if skip else state

    def _load_model_state(self, state: dict[str, Any], path: Path) -> None:
        skip = self._excluded()
        if not skip:
            self.raw.load_state_dict(state)
            return
        missing, unexpected = self.raw.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(skip)]
        if missing or unexpected:
            raise RuntimeError(f"{path}: model state does not match the module (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")

    def _resumable(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (start fresh). A checkpoint of another identity is stale."""
        if not (resume and self.last.is_file()):
            return None
        try:
            ck = load_checkpoint(self.last)
        except RuntimeError:
            if self.last.exists():
                raise
            return None  # removed meanwhile by rank 0's claim of a stale state directory (torchrun)
        if ck.get("fingerprint") == self.identity:
            return ck
        why = ("it records no fingerprint" if "fingerprint" not in ck
               else "changed: " + ", ".join(changed_keys(ck["fingerprint"], self.identity)))
        if self.info.is_main:
            log.warning("%s: stale training state, starting fresh (%s)", self.last, why)
        return None

    def _clear_stale(self) -> None:
        """Starting fresh: remove what an earlier fit left here (nothing may pass for this run's output)."""
        if self.info.is_main:
            for path in (self.last, self.best_path, self.out / "curves.csv"):
                path.unlink(missing_ok=True)
        D.barrier(self.info)

    def _load(self, ck: dict[str, Any]) -> None:
        self._load_model_state(ck["model"], self.last)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.s = {k: ck[k] for k in self.s}
        rngs = ck["rng"]
        if len(rngs) == self.info.world_size:
            restore_rng(rngs[self.info.rank])
            gens = self._generators()
            for key, state in rngs[self.info.rank].get("generators", {}).items():
                if key in gens:
                    gens[key].set_state(state)
        else:  # a different number of processes: data order stays exact, dropout streams are reseeded
            self._seed_global(self.seed + 7919 * self.s["step"])

    def _seed_global(self, s: int) -> None:
        s = s + self.info.rank
        torch.manual_seed(s)
        np.random.seed(s % 2**32)  # noqa: NPY002 - third-party augmentations may use the legacy global RNG
        random.seed(s)

    # ------------------------------------------------------------------------------------------------- run
    def run(self, resume: bool) -> FitResult:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        ck = self._resumable(resume)
        D.barrier(self.info)  # every rank has decided before rank 0 removes anything
        if ck is not None:
            self._load(ck)
            if self.info.is_main:  # a resume is told from a fresh start in the job's log
                log.warning("%s: resuming at optimiser step %d of %d", self.last, self.s["step"], self.total)
        else:
            self._clear_stale()
            self._seed_global(self.seed)
        if not self.s["done"]:
            self._train()
        return self._finish()

    def _train(self) -> None:
        self.raw.train()
        images = self.cfg.batch_size * self.info.world_size * self.cfg.grad_accum
        bar = progress(self.total, self.s["step"], self.cfg.progress and self.info.is_main, items_per_step=images)
        stop = False
        while self.s["step"] < self.total and not stop:
            it = self._epoch_iter()
            while self.s["batch_in_epoch"] + self.cfg.grad_accum <= self.micro_per_epoch:
                if self.s["step"] >= self.total:
                    break
                micro = [next(it) for _ in range(self.cfg.grad_accum)]
                self.s["batch_in_epoch"] += self.cfg.grad_accum
                self._step(micro)
                _advance(bar, self._last_loss)
                if self.s["step"] % self.cfg.ckpt_every == 0 and not self._epoch_ended():
                    self._save(self.last)
            if self._epoch_ended():
                self.s["epoch"] += 1
                self.s["batch_in_epoch"] = 0
                stop = self._validate()
                self._save(self.last)
        bar.close()
        self.s["done"] = True
        self._flush_log()
        self._save(self.last, final=True)

    def _epoch_ended(self) -> bool:
        return self.s["batch_in_epoch"] + self.cfg.grad_accum > self.micro_per_epoch

    def _epoch_iter(self):
        epoch = self.s["epoch"]
        self.sampler.set_epoch(epoch, skip=self.s["batch_in_epoch"])
        self.loader.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, 1]).generate_state(1)[0]))
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        return iter(self.loader)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _step(self, micro: list[Any]) -> None:
        cfg, step = self.cfg, self.s["step"]
        self._set_schedule(step)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            sync = self.model.no_sync() if self.info.enabled and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    out = self.model(to_device(batch, self.device))
                if not isinstance(out, dict) or "loss" not in out:
                    raise TypeError(f"{type(self.raw).__name__}(batch) must return a dict with 'loss', got "
                                    f"{type(out).__name__}{sorted(out) if isinstance(out, dict) else ''}")
                (out["loss"].float() / cfg.grad_accum).backward()
            for k, v in _scalars(out).items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        if hasattr(self.raw, "on_after_backward"):
            self.raw.on_after_backward(step, self.total)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm or math.inf)
        parts = {k: float(v) for k, v in sums.items()}
        self._last_loss = parts.get("loss")
        self._check_finite(parts, float(norm))
        self.optimizer.step()
        self.s["step"] = step + 1
        if hasattr(self.raw, "on_step_end"):
            self.raw.on_step_end(self.s["step"], self.total)
        self._log(parts, float(norm))

    def _check_finite(self, parts: dict[str, float], norm: float) -> None:
        bad = not all(math.isfinite(v) for v in parts.values()) or not math.isfinite(norm)
        if D.any_rank(bad, self.info, self.device):
            raise FloatingPointError(
                f"non-finite loss or gradient at step {self.s['step'] + 1} (epoch {self.s['epoch']}) on rank "
                f"{self.info.rank}: loss parts {parts}, gradient norm {norm}. Training stopped before the "
                f"optimiser step; the last good checkpoint {self.last} (step {self.s['saved_step']}) is kept.")

    # ----------------------------------------------------------------------------------------------- logging
    def _log(self, parts: dict[str, float], norm: float) -> None:
        acc = self.s["acc"]
        for k, v in {**parts, "grad_norm": norm}.items():
            acc[k] = acc.get(k, 0.0) + v
        self.s["acc_n"] += 1
        if self.s["step"] % self.cfg.log_every == 0:
            self._flush_log()

    def _flush_log(self) -> None:
        n = self.s["acc_n"]
        if not n:
            return
        means = D.all_mean({k: v / n for k, v in self.s["acc"].items()}, self.info, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.s["history"].append({"step": self.s["step"], "epoch": self.s["epoch"], "lr": lr, **means})
        self.s["acc"], self.s["acc_n"] = {}, 0
        self._write_curves()

    # --------------------------------------------------------------------------------- validation and end
    def _validate(self) -> bool:
        """Evaluate (rank 0), record, keep the best weights; True when patience is exhausted."""
        if self.val_fn is None:
            return False
        self._flush_log()
        metrics = None
        if self.info.is_main:
            self.raw.eval()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.val_fn(self.raw).items()}
            self.raw.train()
        metrics = D.broadcast(metrics, self.info)
        if self.cfg.monitor not in metrics:
            raise KeyError(f"engine.monitor = {self.cfg.monitor!r} is not among the val_fn metrics {sorted(metrics)}")
        epoch = self.s["epoch"] - 1  # the epoch just finished (0-based, as in the training rows)
        self.s["history"].append({"step": self.s["step"], "epoch": epoch,
                                  **{f"val_{k}": v for k, v in metrics.items()}})
        value, best = metrics[self.cfg.monitor], self.s["best_metric"]
        if best is None or (value < best if self.cfg.mode == "min" else value > best):
            self.s["best_metric"], self.s["bad_epochs"] = value, 0
            if self.info.is_main:  # a copy: the weights move on; written with the next checkpoint (_persist_best)
                weights = {k: v.detach().clone() for k, v in self._model_state().items()}
                self._best = {"model": weights, "step": self.s["step"], "epoch": epoch,
                              "monitor": self.cfg.monitor, "metric": value, "fingerprint": self.identity}
                self._best_unsaved = True
            return False
        self.s["bad_epochs"] += 1
        return self.cfg.patience is not None and self.s["bad_epochs"] >= self.cfg.patience

    def _finish(self) -> FitResult:
        D.barrier(self.info)
        best = None
        if self.val_fn is not None and self._best is not None:  # found in this process
            self._load_model_state(self._best["model"], self.best_path)
        elif self.val_fn is not None and self.best_path.is_file():  # found before a resume (or a finished run)
            self._load_model_state(load_checkpoint(self.best_path)["model"], self.best_path)
        if self.val_fn is not None and self.best_path.is_file() and not self._best_unsaved:
            best = str(self.best_path)
        return FitResult(history=list(self.s["history"]), steps=self.s["step"],
                         best_metric=self.s["best_metric"], best_path=best)


def _advance(bar: Any, loss: float | None) -> None:
    """One step of ``cxrbench.engine.progress``'s bar: tqdm shows the loss as a postfix, log lines as a field."""
    if hasattr(bar, "set_postfix"):
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)
    else:
        bar.update(1, loss=loss)


def _scalars(out: dict[str, Any]) -> dict[str, torch.Tensor | float]:
    """The scalar entries of a module's output dict (detached), 'loss' first."""
    res: dict[str, Any] = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            res[k] = v.detach().float()
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            res[k] = float(v)
    return res
