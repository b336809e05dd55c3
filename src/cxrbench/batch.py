"""Several runs of one method in one evaluate job, in one process or in a few forked worker processes.

An evaluate job of the workflow names a chunk of one method's runs (``evaluate.runs_per_job``). Its process pays
the start-up once (imports, the checkpoint, the stores) and then:

1. gives each run its work key (:func:`cxrbench.evaluate.work_key`): a run whose key an earlier run of the chunk
   has is written from that run after it finished (the demo's 1% and 10% are the same rows), never recomputed;
2. groups the runs left by cell, (task, dataset), so that one worker computes a cell's frozen features once and
   every fraction and seed of the cell reads them from its in-memory cache;
3. runs the cells, heaviest first (``Task.relative_cost`` x runs: longest-processing-time order, so the job's
   workers finish together), in this process (``processes: 1``) or in ``processes`` workers forked from it after
   the start-up (``evaluate.processes``: the demo's two cores run one job of two workers instead of two jobs that
   each pay the start-up; at paper scale one run per job, one process per GPU).

A run that fails is reported with its traceback and the chunk goes on; the returned list names the failed runs.
Workers are forked (they inherit the loaded modules and checkpoint) only while this process runs one thread per
worker, so no OpenMP thread pool exists at the fork.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    """``cells``: the runs to compute, grouped by (task, dataset), heaviest first; ``reuse``: run spec -> the spec
    of the run with the same work key that computes it."""

    cells: list[list[Any]] = field(default_factory=list)
    reuse: dict[str, str] = field(default_factory=dict)


def plan(templates: Sequence[Any], key_of: Callable[[Any], str | None], cost_of: Callable[[str], float]) -> Plan:
    """Group ``templates`` (``RunTemplate``) into cells and duplicates. ``key_of(template)`` is its work key (None:
    always computed), ``cost_of(task)`` a relative cost per run (the order only: heaviest cells first, ties in
    the given order)."""
    out, first, cells = Plan(), {}, {}
    for t in templates:
        key = key_of(t)
        if key is not None and key in first:
            out.reuse[t.spec()] = first[key].spec()
            continue
        if key is not None:
            first[key] = t
        cells.setdefault((t.task, t.dataset), []).append(t)
    order = list(cells)
    order.sort(key=lambda c: -cost_of(c[0]) * len(cells[c]))  # stable: ties keep the chunk's order
    out.cells = [cells[c] for c in order]
    return out


def run_batch(templates: Sequence[Any], run_one: Callable[[Any], bool], reuse_one: Callable[[Any, Any], bool],
              key_of: Callable[[Any], str | None], cost_of: Callable[[str], float], processes: int = 1,
              warm_up: Callable[[], None] | None = None, threads_per_process: int = 1) -> list[str]:
    """Run every template of a chunk; returns the specs of the runs that failed. ``run_one(t)`` computes run t and
    says whether it succeeded; ``reuse_one(t, source)`` writes t from the finished run ``source``. With
    ``processes`` > 1 the cells go to that many forked workers; ``warm_up()`` runs first, in this process, so that
    the workers inherit what it loads."""
    by_spec = {t.spec(): t for t in templates}
    p = plan(templates, key_of, cost_of)
    if warm_up is not None:
        warm_up()
    ok = _run_cells(p.cells, run_one, processes, threads_per_process)
    for spec, source in p.reuse.items():
        if ok.get(source):
            ok[spec] = _guarded(lambda s=spec, src=source: reuse_one(by_spec[s], by_spec[src]), spec)
        else:
            print(f"cxrbench evaluate: run {spec} not written: the run it repeats ({source}) failed", file=sys.stderr)
            ok[spec] = False
    return [t.spec() for t in templates if not ok.get(t.spec())]


def _guarded(fn: Callable[[], bool], spec: str) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - one failed run of a chunk must not cost the others theirs
        print(f"cxrbench evaluate: run {spec} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return False


def _cell(cell: list[Any], run_one: Callable[[Any], bool]) -> dict[str, bool]:
    out = {}
    for t in cell:
        out[t.spec()] = _guarded(lambda t=t: run_one(t), t.spec())
        sys.stdout.flush()
    return out


def _run_cells(cells: list[list[Any]], run_one: Callable[[Any], bool], processes: int,
               threads: int = 1) -> dict[str, bool]:
    ok: dict[str, bool] = {}
    if processes <= 1 or len(cells) <= 1:
        for cell in cells:
            ok.update(_cell(cell, run_one))
        return ok
    import functools
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    _SHARED.update(run_one=run_one, cells=cells)  # inherited by the forked workers (closures cannot be pickled)
    try:
        with ProcessPoolExecutor(min(processes, len(cells)), mp_context=mp.get_context("fork"),
                                 initializer=functools.partial(_set_threads, threads)) as pool:
            futures = [(cell, pool.submit(_worker_cell, i)) for i, cell in enumerate(cells)]
            for cell, fut in futures:
                try:
                    ok.update(fut.result())
                except Exception:  # noqa: BLE001 - a worker that died: its cell's runs failed, the others stand
                    print(f"cxrbench evaluate: the worker of cell {cell[0].task}:{cell[0].dataset} died:\n"
                          f"{traceback.format_exc()}", file=sys.stderr, flush=True)
                    ok.update({t.spec(): False for t in cell})
    finally:
        _SHARED.clear()
    return ok


#: what the forked workers read: the run function and the cells (set just before the pool forks them)
_SHARED: dict[str, Any] = {}


def _set_threads(n: int) -> None:
    """A worker's thread budget for torch and for the BLAS / OpenMP pools numpy and scikit-learn use (without it
    each of the workers would run as many BLAS threads as the job has cores: oversubscribed, spinning)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, int(n)))
    threadpool_limits(max(1, int(n)))


def _worker_cell(index: int) -> dict[str, bool]:
    return _cell(_SHARED["cells"][index], _SHARED["run_one"])
