"""The contract of a downstream task (one registered file per task).

A task is a class registered with ``@TASKS.register(name)``. The evaluate stage builds it with its resolved
parameters and calls ``run`` once per (method, dataset, fraction, seed). ``run`` returns the metrics dictionary that
is written to ``metrics.json`` in the run directory (flat keys: ``"AUROC"``, ``"AUROC/Atelectasis"``,
``"Dice@reference"``, ``"Dice@strict"`` ...), and may write figures' raw material (a few maps) into ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class NotApplicable(Exception):
    """Raised by ``Task.check`` when a task cannot run for a method (e.g. zero-shot without a text tower);
    the matrix records the reason instead of a number."""


class Task:
    name: ClassVar[str] = ""
    #: dataset names this task runs on (from the protocol)
    datasets: ClassVar[tuple[str, ...]] = ()
    #: whether the task trains anything (zero-shot tasks don't, so they run once, not per fraction)
    uses_fractions: ClassVar[bool] = True
    #: whether the method must have a text tower
    requires_text: ClassVar[bool] = False
    #: whether the run depends on its fraction only through the store's training rows (``data.rows("train", f)``),
    #: so two fractions with the same rows (the demo's 1% and 10% under ``data.min_positives``) are one computation
    #: (``cxrbench.evaluate.work_key``); a task drawing its own subset says False
    fraction_is_store_rows: ClassVar[bool] = True
    #: whether the method must have a pretrained segmentation decoder (the encoder-decoder setting)
    requires_decoder: bool = False
    #: a run's cost relative to a linear probe's, a scheduling hint only (``cxrbench.batch``: an evaluate job runs
    #: its heaviest cells first); measured on the demo (CPU-s per run: linear ~1, fine-tuning ~15)
    relative_cost: ClassVar[float] = 1.0

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def check_method(self, method_cls: Any) -> None:
        """Raise :class:`NotApplicable` from what the method's class declares (``has_text``, ``has_decoder``),
        before any checkpoint is loaded: a run that cannot apply costs its job next to nothing."""
        if self.requires_text and not getattr(method_cls, "has_text", False):
            raise NotApplicable(f"{self.name} needs a text tower; method {method_cls.name!r} has none")
        if self.requires_decoder and not getattr(method_cls, "has_decoder", False):
            raise NotApplicable(
                f"{self.name} initialises the U-Net from a pretrained decoder; method {method_cls.name!r} has none"
            )

    def check(self, pretrained: Any) -> None:
        """Raise :class:`NotApplicable` with the reason when the task cannot run on ``pretrained``."""
        if self.requires_text and getattr(pretrained, "vl", None) is None:
            raise NotApplicable(f"{self.name} needs a text tower; method {pretrained.method!r} has none")

    def run(
        self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path
    ) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError
