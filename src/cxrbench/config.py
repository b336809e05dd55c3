"""Parameters: loaded once at the command-line boundary, validated against the JSON schema, resolved per stage.

``params.yaml`` is the single source of truth (DVC reads the same keys; Snakemake loads it as its config). Library code
never opens it: the CLI calls :func:`load_params`, then :func:`stage_params` cuts out what one stage needs, and that
resolved dictionary is what flows down and is written next to every output.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
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


def validate_params(params: Mapping[str, Any], *, source: str = "params", files: Sequence[str] = ()) -> dict[str, Any]:
    """Validate ``params`` (``cxrbench.validation``: the schema, each named section's own schema, the cross
    references); ALL problems are raised at once, one line each naming the key and what was expected
    (``err.lines``). ``files``: the YAML files ``params`` was read from by another reader (Snakemake's
    ``workflow.configfiles``), re-read strictly so that a duplicate key is an error there too."""
    from cxrbench import validation, yamlio

    if not isinstance(params, Mapping):
        raise ParamsError(f"{source}: expected a mapping of parameters, got {type(params).__name__}")
    lines = []
    for file in files:
        try:
            yamlio.load_file(file)
        except yamlio.YamlError as err:
            lines.append(str(err))
    lines += [p.line(source) for p in validation.problems(params)]
    if lines:
        head = f"invalid parameters ({len(lines)} problem{'s' * (len(lines) > 1)}):"
        err = ParamsError("\n  ".join([head, *lines]))
        err.lines = lines
        raise err
    return dict(params)


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read (strictly: duplicate keys and syntax errors name file, line and column), override (``key.sub=value``
    with YAML values) and validate a parameter file."""
    from cxrbench import yamlio

    try:
        params = yamlio.load_file(path) or {}
    except yamlio.YamlError as err:
        raise ParamsError(str(err)) from None
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


def entry_section(params: Mapping[str, Any], entry: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """An entry's section with what it derives from: ``method: X`` where X is another entry of
    ``pretrain.methods`` inherits that entry's section (so ``g2d_median: {method: g2d, ...}`` keeps the demo's g2d
    sizes), recursively; the registered method's name stays in ``method``."""
    sections = params["pretrain"]["methods"]
    section = dict(sections[entry])
    parent = section.get("method")
    if parent is None or parent == entry or parent not in sections:
        return section
    if parent in seen:
        raise ParamsError(f"key 'pretrain.methods.{entry}.method': entries derive from each other in a cycle "
                          f"({' -> '.join((*seen, entry, parent))})")
    inherited = entry_section(params, parent, (*seen, entry))
    return merge(inherited, {**section, "method": inherited.get("method", parent)})


def method_params(params: Mapping[str, Any], entry: str) -> dict[str, Any]:
    """Resolved parameters of one matrix method entry, every value the run will use.

    An entry is a section of ``pretrain.methods``; ``method:`` names the registered method it builds (default: the
    entry's own name), or another entry it derives from (:func:`entry_section`), so ``g2d_median: {method: g2d,
    pseudo_mask: {percentile: 50}}`` is the g2d entry with one override.
    Layers, lowest first (:mod:`cxrbench.presets`): the recipe of ``(method, variant)``, the shared
    ``pretrain.engine``, the entry's section. The result also names the entry (``name``), the registered ``method``,
    the ``variant`` and ``preset`` (the recipe's name and the keys whose values differ from it)."""
    from cxrbench import presets

    section = entry_section(params, entry)
    base = str(section.get("method", entry))
    variant = section.get("variant")
    try:
        recipe = presets.preset(base, variant)
    except KeyError as err:
        raise ParamsError(f"key 'pretrain.methods.{entry}.variant': {err.args[0]}") from None
    resolved = merge(merge(recipe, {"engine": params["pretrain"]["engine"]}), section)
    resolved["engine"].setdefault("precision", params["precision"])
    resolved["engine"].setdefault("device", params["device"])
    resolved.update(name=entry, method=base)
    if presets.variants(base):
        resolved["variant"] = variant or presets.DEFAULT_VARIANT
    resolved["preset"] = presets.provenance(base, variant, resolved)
    return resolved


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
