"""Engine parameters, the result of a run, and the learning-rate / weight-decay schedules (pure functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class EngineConfig:
    """Everything the training loop needs. ``batch_size`` is per process (the global batch is
    ``batch_size * world_size * grad_accum``); ``max_steps`` (optimiser steps) caps ``epochs`` when set."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    weight_decay_end: float | None = None  # cosine weight-decay schedule to this value (DINOv2: 0.04 -> 0.4)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # SGD only
    optimizer: str = "adamw"  # adamw | sgd
    schedule: str = "constant"  # constant | warmup_cosine | cosine_restarts
    warmup_steps: int = 0
    restart_every: int = 200  # cosine_restarts period, in optimiser steps
    min_lr: float = 0.0
    precision: str = "fp32"  # auto | fp32 | bf16 (auto: bf16 where the device runs it natively, engine.precision)
    grad_accum: int = 1
    clip_norm: float | None = None
    ckpt_every: int = 100
    ckpt_min_seconds: float = 0.0  # > 0: no checkpoint sooner than this after the last (demo downstream runs of a few
    # seconds then write none; a fine-tuned ResNet-18 + AdamW state is ~134 MB a save)
    log_every: int = 10
    num_workers: int = 0
    patience: int | None = None  # epochs without improvement before stopping (val_fn required)
    monitor: str = "loss"
    mode: str = "min"  # min | max
    progress: bool = True
    drop_last: bool = True
    device: str = "auto"  # auto | cpu | cuda
    devices: int = 1  # processes the pretrain rule launches (torchrun --nproc_per_node); the loop reads WORLD_SIZE
    find_unused_parameters: bool = True  # DDP: parameters unused in some steps (G2D's decoder early, mask token)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded with the checkpoint

    def __post_init__(self) -> None:
        choices = {"optimizer": ("adamw", "sgd"), "schedule": ("constant", "warmup_cosine", "cosine_restarts"),
                   "precision": ("auto", "fp32", "bf16"), "mode": ("min", "max"), "device": ("auto", "cpu", "cuda")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"engine.{key} = {getattr(self, key)!r}; expected one of {allowed}")
        for key in ("epochs", "batch_size", "grad_accum", "ckpt_every", "log_every", "restart_every", "devices"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"engine.{key} = {getattr(self, key)!r}; expected an integer >= 1")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> EngineConfig:
        """Build from a parameter mapping; unknown keys are an error naming them and the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise KeyError(f"unknown engine parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**params)


@dataclass
class FitResult:
    """history: logged rows (dicts). steps: optimiser steps done. best_metric/best_path: early-stopping state."""

    history: list[dict[str, Any]]
    steps: int
    best_metric: float | None = None
    best_path: str | None = None


def _cosine(t: float) -> float:
    """0.5 (1 + cos(pi t)) for t in [0, 1]: 1 -> 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_at(step: int, total_steps: int, cfg: EngineConfig, base_lr: float | None = None) -> float:
    """Learning rate of optimiser step ``step`` (0-based) for a group whose peak lr is ``base_lr``.

    Warm-up (any schedule): lr_s = base (s + 1) / W for s < W. Then, with u = s - W, lo = min_lr * base / cfg.lr:
    constant: base; warmup_cosine: lo + (base - lo) 0.5 (1 + cos(pi u / (T - W)));
    cosine_restarts (SGDR, period P): lo + (base - lo) 0.5 (1 + cos(pi (u mod P) / P))."""
    base = cfg.lr if base_lr is None else base_lr
    w = cfg.warmup_steps
    if step < w:
        return base * (step + 1) / w
    lo = cfg.min_lr * base / cfg.lr if cfg.lr else 0.0
    u = step - w
    if cfg.schedule == "constant":
        return base
    if cfg.schedule == "warmup_cosine":
        return lo + (base - lo) * _cosine(u / max(total_steps - w, 1))
    return lo + (base - lo) * _cosine((u % cfg.restart_every) / cfg.restart_every)


def wd_at(step: int, total_steps: int, cfg: EngineConfig) -> float:
    """Weight decay of step ``step``: cfg.weight_decay, or cosine from it to ``weight_decay_end`` over the run:
    wd_s = end + (start - end) 0.5 (1 + cos(pi s / T))."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    end, start = cfg.weight_decay_end, cfg.weight_decay
    return end + (start - end) * _cosine(step / max(total_steps, 1))
