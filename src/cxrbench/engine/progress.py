"""Progress of a long loop: a tqdm bar on a terminal, else one log line at a bounded rate (a job's log file).

``progress(total, initial, enabled)`` returns an object with ``update(n=1, **info)`` and ``close()``. On a
terminal it is tqdm; elsewhere (a Snakemake or SLURM job writing to its log) :class:`LineProgress` writes
``<label> 120/400 (30%) | loss 3.512 | 41.2 img/s | ETA 0:06:47`` to stderr on the first update, then at most once
every ``interval`` seconds, and on the last one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class LineProgress:
    """Bounded-rate progress lines. ``items_per_step``: images per update (the global batch), for img/s."""

    def __init__(self, total: int, initial: int = 0, *, label: str = "step", interval: float = 30.0,
                 items_per_step: int | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.start_done = int(total), int(initial), int(initial)
        self.label, self.interval, self.items = label, float(interval), items_per_step
        self.stream, self.clock = stream, clock
        self.t0 = clock()
        self.last: float | None = None
        self.info: dict[str, Any] = {}

    def update(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info.update(info)
        now = self.clock()
        if self.last is None or now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            print(self.line(now), file=self.stream or sys.stderr, flush=True)

    def line(self, now: float) -> str:
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)  # updates per second, this process
        parts = [f"{self.label} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items()]
        if self.items:
            parts.append(f"{rate * self.items:.1f} img/s")
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        parts.append(f"ETA {_clock(left)}")
        return " | ".join(parts)

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1, **info: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress(total: int, initial: int, enabled: bool, *, label: str = "step", interval: float = 30.0,
             items_per_step: int | None = None):
    """A tqdm bar when ``enabled`` and stderr is a terminal, bounded-rate log lines when enabled elsewhere, else
    nothing."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=label, dynamic_ncols=True, leave=False)
    return LineProgress(total, initial, label=label, interval=interval, items_per_step=items_per_step)
