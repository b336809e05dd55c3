"""Contamination audit: which downstream test images (and patients) a pretraining corpus already holds.

The work is in :mod:`cxrbench.audit.core` (see its docstring for the method and the measured threshold); this module
holds what the workflow needs at parse time, without importing numpy or pandas: the parameters, the result path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

RESULT_FILE = "contamination.json"
#: dataset -> (id space, manifest column holding the hashed id in that space); every other dataset: (itself,
#: "image_id"). MS-CXR rows are MIMIC-CXR images: its ``dicom_id`` column holds ``hash_id(MIMIC dicom_id)``.
ID_SPACES: dict[str, tuple[str, str]] = {"ms_cxr": ("mimic", "dicom_id")}
#: the ``audit:`` section's defaults (params.yaml sets every key)
DEFAULTS: dict[str, Any] = {"out": "results/audit", "hash_size": 16, "hamming_threshold": 10, "image_lists": {},
                            "exclude_contaminated": False}


def section(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit:`` parameters over :data:`DEFAULTS`."""
    return {**DEFAULTS, **(params.get("audit") or {})}


def id_space(dataset: str) -> tuple[str, str]:
    """(space, manifest column) in which ``dataset``'s images are identified."""
    return ID_SPACES.get(dataset, (dataset, "image_id"))


def audit_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved slice the audit reads: its section, the stores (pretraining corpus and every test dataset of
    the matrix), the phash cache directory."""
    from cxrbench import matrix

    tests = sorted({d for t in params["matrix"]["tasks"] for d in params["evaluate"]["tasks"][t]["datasets"]})
    names = sorted({params["pretrain"]["dataset"], *tests, *matrix.datasets(params)})
    audit = section(params)
    return {**{k: audit[k] for k in ("hash_size", "hamming_threshold", "image_lists")},
            "pretrain_dataset": params["pretrain"]["dataset"], "tests": tests,
            "stores": {d: matrix.prepared_dir(params, d) for d in names},
            "cache": str(PurePosixPath(params["paths"]["features"], "phash"))}


def audit_file(params: Mapping[str, Any]) -> str:
    """Where the audit's result lives: ``<audit.out>/contamination.json``."""
    return str(PurePosixPath(section(params)["out"], RESULT_FILE))


def list_paths(params: Mapping[str, Any]) -> list[str]:
    """The image-list files the audit reads (workflow inputs)."""
    lists = section(params)["image_lists"] or {}
    return sorted(str(v if isinstance(v, str) else v["path"]) for v in lists.values())


def run_audit(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`cxrbench.audit.core.run_audit` (imported on call)."""
    from cxrbench.audit.core import run_audit as run

    return run(cfg)


def write_result(result: Mapping[str, Any], path: str) -> str:
    """:func:`cxrbench.audit.core.write_result` (imported on call)."""
    from cxrbench.audit.core import write_result as write

    return str(write(result, path))
