"""Parameters: loaded once at the command-line boundary, validated against the JSON schema, resolved per stage.

``params.yaml`` is the single source of truth (DVC reads the same keys; Snakemake loads it as its config). Library code
never opens it: the CLI calls :func:`load_params`, then :func:`stage_params` cuts out what one stage needs, and that
resolved dictionary is what flows down and is written next to every output.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A parameter is missing or has a bad value; the message names the key."""


def schema() -> dict[str, Any]:
    """The JSON schema of ``params.yaml`` (shipped inside the package, also used by the Snakefile)."""
    text = resources.files("cxrbench.resources").joinpath("params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def validate_params(params: Mapping[str, Any], *, source: str = "params") -> dict[str, Any]:
    """Validate ``params`` against the schema; the first error names the key, the bad value and what was expected."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        lines = [f"{source}: key '{_key(e.absolute_path)}': {e.message}" for e in errors[:10]]
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines))
    _check_cross_references(params, source)
    return dict(params)


def _check_cross_references(params: Mapping[str, Any], source: str) -> None:
    """What a schema cannot say: every name in the matrix lists must have its own section."""
    matrix = params["matrix"]
    for kind, section in (("methods", params["pretrain"]["methods"]), ("tasks", params["evaluate"]["tasks"])):
        for name in matrix[kind]:
            if name not in section:
                where = "pretrain.methods" if kind == "methods" else "evaluate.tasks"
                raise ParamsError(f"{source}: key 'matrix.{kind}' lists {name!r} but '{where}.{name}' is missing")
    datasets = params["data"]["datasets"]
    for task in matrix["tasks"]:
        for ds in params["evaluate"]["tasks"][task]["datasets"]:
            if ds not in datasets:
                raise ParamsError(
                    f"{source}: key 'evaluate.tasks.{task}.datasets' names {ds!r}, not in 'data.datasets'"
                )
    if params["pretrain"]["dataset"] not in datasets:
        name = params["pretrain"]["dataset"]
        raise ParamsError(f"{source}: key 'pretrain.dataset' is {name!r}, not in 'data.datasets'")


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override (``key.sub=value`` with YAML values) and validate a parameter file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameter file {path} not found (run from the project root or pass --params)")
    params = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        set_key(params, item)
    return validate_params(params, source=str(path))


def set_key(params: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ParamsError(f"override {assignment!r} is not of the form key.sub=value")
    dotted, raw = assignment.split("=", 1)
    node = params
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"override {assignment!r}: key '{dotted}' does not exist")
        node = node[part]
    node[parts[-1]] = _yaml_value(raw)


def _yaml_value(raw: str) -> Any:
    """A YAML value, except that ``3e-4`` is a number (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: dictionaries merge key by key, everything else in ``override`` replaces ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _over_engine(params: Mapping[str, Any], stage: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` merged over the stage's shared ``engine``; precision and device default to the global keys."""
    resolved = merge({"engine": params[stage]["engine"]}, section)
    resolved["engine"].setdefault("precision", params["precision"])
    resolved["engine"].setdefault("device", params["device"])
    return resolved


def method_params(params: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Resolved parameters of one pretraining method: its section, engine defaults merged under its ``engine``."""
    return _over_engine(params, "pretrain", params["pretrain"]["methods"][method])


def task_params(params: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Resolved parameters of one downstream task (its section over the shared evaluate engine defaults)."""
    return _over_engine(params, "evaluate", params["evaluate"]["tasks"][task])


def dataset_params(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Resolved preparation parameters of one dataset (shared ``data`` keys under its own section)."""
    shared = {k: v for k, v in params["data"].items() if k != "datasets"}
    return merge(shared, params["data"]["datasets"][dataset])


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys): what resolved configs are written as and compared by."""
    return json.dumps(obj, sort_keys=True, indent=2, default=str)
