"""The evaluate stage: one run = method x task x dataset x fraction x seed -> one run directory.

``run_evaluation`` loads the pretrained checkpoint and the prepared dataset, builds the registered task with its
resolved parameters, runs it (or records why it does not apply) and writes, atomically:

- ``metrics.json``: ``{"run": {method, task, dataset, fraction, seed}, "status": "ok" | "not_applicable",
  "reason", "metrics": {flat keys}, "metric_forms": {key: definition}, "n": {train, valid, test}, "seconds",
  "cpu_seconds", "max_rss_mb"}``. The last three are the run's wall time, its process CPU time and peak memory:
  what Snakemake's ``benchmark:`` records,
  without its per-job memory polling, which costs more than a small run;
- ``config.json``: the resolved parameters and inputs of the run (``engine.precision`` as resolved, beside
  ``precision_requested``) and its ``fingerprint`` (:func:`run_fingerprint`), which also keys ``train/``, the
  resumable state of a run that has not finished: state of other inputs is removed, never resumed;
- ``examples.npz`` (segmentation, detection, grounding): a few maps / boxes for the figures (written by the task).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.registry import METHODS, TASKS
from cxrbench.tasks._base import NotApplicable

#: what this process loaded, keyed by (path, full, file stamps): an evaluate job runs many runs of one checkpoint
_LOADED: dict[tuple, Any] = {}
_STORES: dict[tuple, Any] = {}


def _stamp(path: Path) -> tuple:
    st = path.stat() if path.exists() else None
    return (st.st_mtime_ns, st.st_size) if st else (None, None)


def load_pretrained(ckpt_dir: Path, *, full: bool = True) -> Any:
    """The checkpoint directory as a :class:`cxrbench.methods._base.Pretrained` (imported lazily); ``full=False``
    skips the full model (text tower, decoder), which only zero-shot tasks and the encoder-decoder setting use.

    Loaded once per process and file version, then handed out as a deep copy: a run that trains the encoder
    (fine-tuning) never changes what the next run gets, and the next run skips rebuilding the backbone and the text
    tower (~1 s a run on a 2-core CPU, paid by each of the demo's ~300 runs otherwise)."""
    import copy

    from cxrbench.pretrain import load_pretrained as load

    ckpt_dir = Path(ckpt_dir)
    key = (str(ckpt_dir.resolve()), bool(full), _stamp(ckpt_dir / "encoder.pt"), _stamp(ckpt_dir / "model.pt"))
    if key not in _LOADED:
        if len(_LOADED) >= 2:  # one checkpoint per job: its encoder-only and its full form
            _LOADED.clear()
        _LOADED[key] = load(ckpt_dir, full=full)
    return copy.deepcopy(_LOADED[key])


def checkpoint_method(ckpt_dir: Path) -> str:
    """The method that wrote a checkpoint directory: ``config.json``'s ``method``, else ``encoder.pt``'s."""
    from cxrbench.pretrain import checkpoint_method as read

    return read(ckpt_dir)


def needs_full_model(task: Any) -> bool:
    return bool(task.requires_text or task.requires_decoder)


def open_dataset(dataset_dir: Path) -> Any:
    """The prepared store, opened once per process and store version (read-only: runs share it)."""
    from cxrbench.data.store import PreparedDataset

    dataset_dir = Path(dataset_dir)
    key = (str(dataset_dir.resolve()), _stamp(dataset_dir / "meta.json"), _stamp(dataset_dir / "manifest.parquet"))
    if key not in _STORES:
        _STORES[key] = PreparedDataset(dataset_dir)
    return _STORES[key]


def recorded_params(params: dict[str, Any], dataset: str, fraction: int) -> dict[str, Any]:
    """The task parameters as config.json records them: ``engine.precision`` is what this run trains in (``auto``
    resolved on its device, after the ``by_dataset`` / ``by_fraction`` overrides), ``engine.precision_requested``
    what was asked for."""
    from cxrbench.engine.precision import resolved_engine_params
    from cxrbench.tasks._common import resolve

    engine = dict(resolve(params, dataset, fraction).get("engine") or {})
    return {**params, "engine": {**dict(params.get("engine") or {}), **resolved_engine_params(engine)}}


def run_fingerprint(task: str, dataset: str, fraction: int, seed: int, params: dict[str, Any], store: Any,
                    pretrained: Any, full_model: Path | None) -> dict[str, Any]:
    """The inputs of one run: task, dataset, fraction, seed, the task parameters as recorded (precision resolved;
    the cache location left out), the code version, the content hash of the prepared store, the hash of the
    encoder's weights and, for tasks that use the whole pretrained model, the hash of model.pt."""
    from cxrbench.fingerprint import code_version, data_hash, file_hash, module_hash, normalise

    recorded = {k: v for k, v in recorded_params(params, dataset, fraction).items() if k != "cache_dir"}
    return normalise({"stage": "evaluate", "task": task, "dataset": dataset, "fraction": fraction, "seed": seed,
                      "params": recorded, "code": code_version(), "data": data_hash(store),
                      "encoder": module_hash(pretrained.backbone),
                      "input": {**dict(pretrained.normalize), "size": int(pretrained.image_size)},  # the recipe
                      "model": file_hash(full_model) if full_model is not None else None})


def claim_run_state(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Key the run's resumable state (``out_dir/train``) by ``fingerprint``: state of other inputs (a killed run
    of another lr, encoder or data) is removed before the task starts; config.json records the fingerprint."""
    from cxrbench.fingerprint import claim_state_dir

    claim_state_dir(Path(out_dir) / "train", fingerprint, what="training state of the run")
    config = json.loads((Path(out_dir) / "config.json").read_text())
    write_json_atomic(Path(out_dir) / "config.json", {**config, "fingerprint": fingerprint})


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Canonical JSON (sorted keys, NaN -> null) written through a temporary file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def work_key(task: str, dataset_dir: Path, dataset: str, fraction: int, seed: int,
             task_params: dict[str, Any]) -> str | None:
    """What a run computes, without its fraction's name: task, dataset, seed, the training rows the fraction selects
    (their hash) and the task parameters resolved for that fraction. Two runs of one encoder with the same key are the
    same computation (every task is a deterministic function of these), e.g. the demo's 1% and 10% when the
    ``data.min_positives`` floor makes both the same rows. None when the task draws its own subset."""
    import hashlib

    from cxrbench.tasks._common import resolve

    if not getattr(TASKS.get(task), "fraction_is_store_rows", True):
        return None
    rows = np.asarray(open_dataset(Path(dataset_dir)).rows("train", int(fraction)), dtype=np.int64)
    resolved = {k: v for k, v in resolve(task_params, dataset, int(fraction)).items() if k != "cache_dir"}
    body = json.dumps({"task": task, "dataset": dataset, "seed": int(seed), "params": _jsonable(resolved),
                       "rows": hashlib.sha256(rows.tobytes()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def reuse_run(source: Path, out_dir: Path, fraction: int) -> dict[str, Any]:
    """Write ``out_dir`` as run ``fraction`` from the finished run ``source`` of the same :func:`work_key`: its files
    (predictions, examples, curves) copied, config.json and metrics.json naming this fraction and, under ``reused``,
    the run that computed them. Returns the metrics record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.name not in ("metrics.json", "config.json", "train") and item.is_file():
            shutil.copy2(item, out_dir / item.name)
    for name in ("config.json", "metrics.json"):
        rec = json.loads((Path(source) / name).read_text())
        rec["run"] = {**rec["run"], "fraction": int(fraction)}
        rec["reused"] = {"from": str(source), "reason": "same training rows, seed and resolved parameters"}
        if name == "metrics.json":
            rec.update(seconds=0.0, cpu_seconds=0.0)
        write_json_atomic(out_dir / name, rec)
    return rec


def run_evaluation(
    *,
    ckpt_dir: Path,
    task: str,
    dataset_dir: Path,
    dataset: str,
    fraction: int,
    seed: int,
    task_params: dict[str, Any],
    out_dir: Path,
    cache_dir: Path | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """Run one downstream evaluation and write ``out_dir/metrics.json`` + ``config.json``; returns the metrics
    record. ``cache_dir`` (default ``task_params["cache_dir"]``, else ``data/features``) holds frozen features.
    The torch default generator is seeded with ``seed`` here, at the stage boundary, for any library code that
    draws from it; the tasks themselves use explicit generators derived from ``seed``. ``method`` names the matrix
    entry (its run directory; default: the registered method that wrote the checkpoint, ``base_method``)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    params = {**task_params, "cache_dir": str(cache_dir or task_params.get("cache_dir") or "data/features")}
    task_obj = TASKS.get(task)(params)
    if task_obj.datasets and dataset not in task_obj.datasets:
        raise ValueError(f"task {task!r} runs on {list(task_obj.datasets)}, not on dataset {dataset!r}")
    base = checkpoint_method(Path(ckpt_dir))
    run = {"method": method or base, "task": task, "dataset": dataset, "fraction": int(fraction), "seed": int(seed)}
    write_json_atomic(
        out_dir / "config.json",
        {"run": run, "ckpt_dir": str(ckpt_dir), "dataset_dir": str(dataset_dir),
         "task_params": recorded_params(params, dataset, int(fraction))},
    )
    torch.manual_seed(seed)
    status, reason, metrics = "ok", None, {}
    try:
        task_obj.check_method(METHODS.get(base))  # from the class alone: no checkpoint or dataset loaded yet
        store = open_dataset(Path(dataset_dir))
        if str(store.name) != dataset:
            raise ValueError(
                f"{dataset_dir}: prepared store holds dataset {store.name!r}, but the run names {dataset!r}"
            )
        pretrained = load_pretrained(Path(ckpt_dir), full=needs_full_model(task_obj))
        task_obj.check(pretrained)
        claim_run_state(out_dir, run_fingerprint(task, dataset, int(fraction), int(seed), params, store, pretrained,
                                                 Path(ckpt_dir) / "model.pt" if needs_full_model(task_obj) else None))
        metrics = task_obj.run(pretrained, store, int(fraction), int(seed), out_dir)
    except NotApplicable as err:
        status, reason = "not_applicable", str(err)
    record = {
        "run": run,
        "status": status,
        "reason": reason,
        "metrics": metrics,
        "metric_forms": dict(getattr(task_obj, "metric_forms", {})),
        "n": dict(getattr(task_obj, "n", {})) or {"train": 0, "valid": 0, "test": 0},
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),  # this process's CPU: what the run costs
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    _drop_training_state(out_dir)
    write_json_atomic(out_dir / "metrics.json", record)
    return _jsonable(record)


def _drop_training_state(out_dir: Path) -> None:
    """Keep a finished run's curves, drop its resumable engine state (weights, optimiser): the run directory is
    versioned by DVC and must stay small. A killed run never reaches here, so it still resumes."""
    train = Path(out_dir) / "train"
    if not train.is_dir():
        return
    if (train / "curves.csv").exists():
        shutil.copyfile(train / "curves.csv", Path(out_dir) / "curves.csv")
    shutil.rmtree(train)
