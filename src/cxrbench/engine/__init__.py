"""The one training engine: ``fit(module, train_set, EngineConfig(...), out_dir, seed=...) -> FitResult``."""

from cxrbench.engine.config import EngineConfig, FitResult, lr_at, wd_at
from cxrbench.engine.loop import fit

__all__ = ["EngineConfig", "FitResult", "fit", "lr_at", "wd_at"]
