"""Everything that makes a parameter file unable to run, found before any job starts, ALL problems at once.

Two passes over the parameters:

1. the structure (``resources/params.schema.yaml``): sections, types, the matrix lists;
2. each named section against the schema of its registered name, one small file per name under
   ``resources/schemas/{methods,tasks,datasets,backbones}/<name>.yaml`` (every key the code reads, its type, range and
   allowed values; ``additionalProperties: false``, so a typo is an unknown key, not a silently used default), then
   what no schema can say: names registered, a task on a dataset it supports, every matrix fraction prepared,
   ``grad_accum`` within the batches of an epoch, ``engine.monitor`` reported by the task, ``text.freeze_layers``
   within the text encoder's depth.

Nothing here imports torch (Snakemake parses the workflow, and so runs this, at every invocation): the registered
names are the schema files' names, and what the registered classes declare that validation needs (a task's
datasets and monitored metrics, a dataset's split sizes) is written in the schema file as ``x-...`` keys;
``tests/test_validation.py`` checks both against the registries.

Adding a parameter: add the key (type, range, description) to the schema file of the method / task / dataset /
backbone that reads it, and to ``params.yaml`` and ``workflow/params/paper.yaml``; a shared engine key goes to
``$defs/engine`` of ``params.schema.yaml`` (and to ``EngineConfig``).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

KINDS = ("methods", "tasks", "datasets", "backbones")
_BASE = "https://cxrbench.invalid/"  # base URI of the schema files: "$ref: /params.schema.yaml#/$defs/engine"


@dataclass(frozen=True, order=True)
class Problem:
    """One reason the parameters cannot run: the dotted key and what was expected."""

    key: str
    message: str
    #: a schema violation (a wrong value); a cross-reference check on the same key is then only an echo of it
    primary: bool = field(default=False, compare=False)

    def line(self, source: str) -> str:
        return f"{source}: key '{self.key}': {self.message}"


# ------------------------------------------------------------------------------------------------ schema files


def _resource(relpath: str) -> Any:
    """A file or folder under ``cxrbench/resources`` (one path part at a time: namespace-package paths)."""
    node = resources.files("cxrbench.resources")
    for part in relpath.split("/"):
        node = node.joinpath(part)
    return node


@functools.cache
def registered(kind: str) -> tuple[str, ...]:
    """Names that have a schema file under ``schemas/<kind>/`` (the test keeps them equal to the registry's)."""
    folder = _resource(f"schemas/{kind}")
    return tuple(sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml")))


@functools.cache
def _document(relpath: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # parsed at every Snakemake invocation: the fast one
    return yaml.load(_resource(relpath).read_text(), Loader=loader)  # noqa: S506 - a safe loader


def load_schema(kind: str, name: str) -> dict[str, Any]:
    """The schema of a registered name (a copy, ``$id`` set so its ``$ref``s resolve)."""
    return {**_document(f"schemas/{kind}/{name}.yaml"), "$id": f"{_BASE}schemas/{kind}/{name}.yaml"}


def text_depths() -> dict[str, Any]:
    return _document("schemas/text_encoders.yaml")


@functools.cache
def _registry() -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    docs = ["params.schema.yaml"] + [f"schemas/{k}/{n}.yaml" for k in KINDS for n in registered(k)]
    pairs = [(_BASE + d, Resource.from_contents(_document(d), default_specification=DRAFT202012)) for d in docs]
    return Registry().with_resources(pairs)


def _validator(schema: Mapping[str, Any]) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _known(schema: Mapping[str, Any]) -> list[str]:
    return sorted((schema.get("properties") or {}).keys())


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(word), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _error_problems(err: Any, prefix: str, what: str) -> Iterator[Problem]:
    """One jsonschema error as problems; an unknown key names itself, the known keys and the closest one."""
    path = [prefix, *map(str, err.absolute_path)] if prefix else list(map(str, err.absolute_path))
    key = ".".join(p for p in path if p) or "<root>"
    if err.validator == "additionalProperties" and err.validator_value is False and isinstance(err.instance, dict):
        known = _known(err.schema)
        for extra in sorted(set(map(str, err.instance)) - set(known)):
            yield Problem(f"{key}.{extra}" if key != "<root>" else extra,
                          f"unknown key{what}; expected one of {known}{_suggest(extra, known)}")
        return
    message = err.message
    if err.validator in ("anyOf", "oneOf") and err.context:
        message += " (" + "; or ".join(sorted({c.message for c in err.context})) + ")"
    yield Problem(key, message + what)


def schema_problems(instance: Any, schema: Mapping[str, Any], prefix: str = "", what: str = "") -> list[Problem]:
    """Every violation of ``schema`` by ``instance``, keys prefixed with ``prefix`` (the section's dotted path)."""
    label = f" ({what})" if what else ""
    errors = _validator(schema).iter_errors(instance)
    return [replace(p, primary=True) for e in errors for p in _error_problems(e, prefix, label)]


# ------------------------------------------------------------------------------------------------ entry point


def problems(params: Mapping[str, Any]) -> list[Problem]:
    """Every problem of ``params`` (sorted, each once). Empty: the file can run."""
    found = schema_problems(params, {**_document("params.schema.yaml"), "$id": _BASE + "params.schema.yaml"})
    for check in CHECKS:
        try:
            for problem in check(params):
                found.append(problem)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            if not found:  # with a structural problem, a check may trip over it: that problem is reported
                raise
    return _without_echoes(found)


def _without_echoes(found: list[Problem]) -> list[Problem]:
    """Drop what only repeats another problem: a check on a key (or below one) whose value is already wrong, and
    the same violation found by two schemas (the structural pass and the name's own)."""
    wrong = {p.key for p in found if p.primary}
    keep = [p for p in found if p.primary or not any(p.key == k or p.key.startswith(k + ".") for k in wrong)]
    unique = sorted(set(keep), key=lambda p: (p.key, len(p.message), p.message))
    out: list[Problem] = []
    for p in unique:
        if not (out and out[-1].key == p.key and p.message.startswith(out[-1].message)):
            out.append(p)
    return sorted(out)


def _get(params: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    node: Any = params
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return default
        node = node[k]
    return node


def _not_registered(kind: str, name: Any, key: str) -> Problem | None:
    names = list(registered(kind + "s"))
    if name in names:
        return None
    return Problem(key, f"{name!r} is not a registered {kind}; registered: {names}{_suggest(str(name), names)}")


# ------------------------------------------------------------------------------------------------ methods


def method_base(params: Mapping[str, Any], name: str, seen: tuple[str, ...] = ()) -> str:
    """The registered method an entry of ``pretrain.methods`` builds: its ``method`` key (followed when it names
    another entry, as ``config.entry_section`` does), else its own name. A cycle ends at the entry it revisits."""
    sections = _get(params, "pretrain", "methods", default={})
    parent = (sections.get(name) or {}).get("method")
    if parent is None or parent == name or parent not in sections or parent in seen:
        return str(parent if parent is not None else name)
    return method_base(params, str(parent), (*seen, name))


def check_methods(params: Mapping[str, Any]) -> Iterator[Problem]:
    for name, section in _get(params, "pretrain", "methods", default={}).items():
        if isinstance(section, Mapping):
            yield from _method_problems(params, name, section)


def _method_problems(params: Mapping[str, Any], name: str, section: Mapping[str, Any]) -> Iterator[Problem]:
    key = f"pretrain.methods.{name}"
    base = method_base(params, name)
    missing = _not_registered("method", base, key + (".method" if "method" in section else ""))
    derives = section.get("method") not in (None, name)
    if missing and derives and base in _get(params, "pretrain", "methods", default={}):
        yield Problem(missing.key, f"entries derive from each other in a cycle (back to {base!r}); expected a chain "
                      "ending at a registered method")
        return
    if missing:
        yield Problem(missing.key, missing.message + "; a named entry derives from one with `method: <name>`")
        return
    schema = load_schema("methods", base)
    if _has_presets():  # a preset may supply a required key: the resolved section must have it
        schema = {k: v for k, v in schema.items() if k != "required"}
    written = schema_problems(section, schema, key, f"method {base}")
    written += [*_backbone_problems(section, key), *_text_depth_problems(section, key)]
    if not _has_presets():
        written += list(_shape_problems(section, base, key))
    yield from written
    seen = {p.key for p in written}
    yield from (p for p in _resolved_method_problems(params, name, base) if p.key not in seen)


def _backbone_problems(section: Mapping[str, Any], key: str) -> Iterator[Problem]:
    if "backbone" not in section:
        return
    missing = _not_registered("backbone", section["backbone"], f"{key}.backbone")
    if missing:
        yield missing
        return
    kwargs = section.get("backbone_kwargs") or {}
    yield from schema_problems(kwargs, load_schema("backbones", section["backbone"]), f"{key}.backbone_kwargs",
                               f"backbone {section['backbone']}")


def text_depth(text: Mapping[str, Any]) -> int | None:
    """Transformer layers of the text encoder ``text`` names, or None when unknown without loading it."""
    name, table = str(text.get("name_or_path", "")), text_depths()
    if isinstance(text.get("keep_layers"), int):
        return int(text["keep_layers"])
    return _model_depth(name, text, table)


def _model_depth(name: str, text: Mapping[str, Any], table: Mapping[str, Any]) -> int | None:
    if name in table.get("layers", {}):
        return int(table["layers"][name])
    if name in table.get("configured", {}):
        rule = table["configured"][name]
        return int(text.get(rule["key"], rule["default"]))
    cfg = Path(name) / "config.json"
    if cfg.is_file():
        try:
            return int(json.loads(cfg.read_text())["num_hidden_layers"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _text_depth_problems(section: Mapping[str, Any], key: str) -> Iterator[Problem]:
    text = section.get("text")
    if not isinstance(text, Mapping):
        return
    keep, full = text.get("keep_layers"), _model_depth(str(text.get("name_or_path", "")), text, text_depths())
    if isinstance(keep, int) and full is not None and keep > full:
        yield Problem(f"{key}.text.keep_layers", f"keeps {keep} layers, but text encoder {text['name_or_path']!r} "
                      f"has {full}; expected 1..{full} or null")
    if not isinstance(text.get("freeze_layers"), int):
        return
    depth = text_depth(text)
    if depth is not None and text["freeze_layers"] > depth:
        yield Problem(f"{key}.text.freeze_layers", f"{text['freeze_layers']} layers to freeze, but text encoder "
                      f"{text['name_or_path']!r} has {depth}; expected 0..{depth} or 'all'")


def _has_presets() -> bool:
    return importlib.util.find_spec("cxrbench.presets") is not None


#: what ``config.method_params`` adds to a section besides parameters: bookkeeping, and the merged engine
_RESOLVED_EXTRA = ("name", "preset", "engine")


def _resolved_method_problems(params: Mapping[str, Any], name: str, base: str) -> Iterator[Problem]:
    """With variant presets (``cxrbench.presets``), the section as the run resolves it (preset, shared engine,
    section) must fit the schema too: a preset value can clash with a user's (e.g. ``freeze_layers`` of the
    preset's text encoder on the user's smaller one)."""
    if not _has_presets():
        return
    from cxrbench import config

    key = f"pretrain.methods.{name}"
    try:
        resolved = config.method_params(params, name)
    except config.ParamsError as err:  # "key 'pretrain.methods.x.variant': ..." (an unknown variant, a cycle)
        found = re.match(r"key '([^']+)': (.*)", str(err), re.S)
        yield Problem(*(found.groups() if found else (key, str(err))))
        return
    what = f"method {base}, as resolved with its variant preset"
    body = {k: v for k, v in resolved.items() if k not in _RESOLVED_EXTRA}
    yield from schema_problems(body, load_schema("methods", base), key, what)
    # the engine as written (pretrain.engine, the section's) is checked where it is written: here the preset's part
    preset = _preset_engine(base, resolved.get("variant"))
    yield from schema_problems(preset, {"$ref": "/params.schema.yaml#/$defs/engine", "$id": _BASE}, f"{key}.engine",
                               what)
    yield from _backbone_problems(body, key)
    yield from _text_depth_problems(body, key)
    yield from _shape_problems(body, base, key)


def _leaf(tree: Mapping[str, Any], dotted: str) -> Any:
    return _get(tree, *dotted.split("."))


def input_multiple(backbone: Any) -> int:
    """What the backbone's input sides must be multiples of (a ViT's patch size; 1 when anything goes)."""
    if backbone not in registered("backbones"):
        return 1
    return int(load_schema("backbones", backbone).get("x-input-multiple", 1))


def _shape_problems(section: Mapping[str, Any], base: str, key: str) -> Iterator[Problem]:
    """Sizes the model's shapes need: encoder inputs a multiple of the patch, a dimension split over heads."""
    schema = load_schema("methods", base)
    multiple = input_multiple(section.get("backbone"))
    for dotted in schema.get("x-input-sizes", []):
        size = _leaf(section, dotted)
        if isinstance(size, int) and size % multiple:
            yield Problem(f"{key}.{dotted}", f"{size} is not a multiple of {multiple}, the patch size of backbone "
                          f"{section['backbone']}")
    for whole, part in schema.get("x-divisible", []):
        a, b = _leaf(section, whole), _leaf(section, part)
        if isinstance(a, int) and isinstance(b, int) and b > 0 and a % b:
            yield Problem(f"{key}.{part}", f"{b} does not divide {whole} = {a}; expected a divisor of {a}")


# ------------------------------------------------------------------------------------------------ tasks


def check_tasks(params: Mapping[str, Any]) -> Iterator[Problem]:
    for name, section in _get(params, "evaluate", "tasks", default={}).items():
        key = f"evaluate.tasks.{name}"
        missing = _not_registered("task", name, key)
        if missing:
            yield missing
            continue
        if not isinstance(section, Mapping):
            continue
        schema = load_schema("tasks", name)
        yield from schema_problems(section, schema, key, f"task {name}")
        yield from _override_problems(params, name, section, schema)
        supported = schema.get("x-datasets") or []
        for ds in section.get("datasets") or []:
            if supported and ds not in supported:
                yield Problem(f"{key}.datasets", f"task {name} does not run on dataset {ds!r}; it supports {supported}")


def _override_problems(params: Mapping[str, Any], name: str, section: Mapping[str, Any],
                       schema: Mapping[str, Any]) -> Iterator[Problem]:
    """``by_dataset`` / ``by_fraction`` entries: partial sections of the same schema, keyed by a run's cell."""
    key = f"evaluate.tasks.{name}"
    partial = {k: v for k, v in schema.items() if k != "required"}
    cells = {"by_dataset": [str(d) for d in section.get("datasets") or []],
             "by_fraction": [str(f) for f in task_fractions(params, name)]}
    for table, allowed in cells.items():
        for sel, over in (section.get(table) or {}).items():
            if str(sel) not in allowed:
                yield Problem(f"{key}.{table}.{sel}", f"no run of task {name} has {table[3:]} {sel!r}; "
                              f"its runs have {allowed}")
            if isinstance(over, Mapping):
                bad = set(over) & {"by_dataset", "by_fraction", "datasets", "fractions", "seeds"}
                yield from (Problem(f"{key}.{table}.{sel}.{b}", "cannot be overridden per cell") for b in sorted(bad))
                yield from schema_problems(over, partial, f"{key}.{table}.{sel}", f"task {name}")


def task_fractions(params: Mapping[str, Any], task: str) -> list[int]:
    section = _get(params, "evaluate", "tasks", task, default={})
    return list(section.get("fractions") or _get(params, "matrix", "fractions", default=[]))


def check_monitors(params: Mapping[str, Any]) -> Iterator[Problem]:
    """Every ``engine.monitor`` a trained task of the matrix resolves must be a metric that task reports."""
    shared = _get(params, "evaluate", "engine", default={})
    for task in _get(params, "matrix", "tasks", default=[]):
        if task not in registered("tasks"):
            continue
        monitors = load_schema("tasks", task).get("x-monitors")
        section = _get(params, "evaluate", "tasks", task, default={})
        places = [("evaluate.engine", shared), (f"evaluate.tasks.{task}.engine", section.get("engine") or {})]
        for table in ("by_dataset", "by_fraction"):
            for sel, over in (section.get(table) or {}).items():
                places.append((f"evaluate.tasks.{task}.{table}.{sel}.engine", (over or {}).get("engine") or {}))
        for where, engine in places:
            if monitors and "monitor" in engine and engine["monitor"] not in monitors:
                yield Problem(f"{where}.monitor", f"{engine['monitor']!r} is not a metric task {task} reports; "
                              f"expected one of {monitors}")


def _method_value(params: Mapping[str, Any], name: str, key: str) -> Any:
    """``key`` of method entry ``name`` as its run resolves it (variant preset, shared engine, section); the
    section's own value without presets; None when the entry cannot be resolved (reported by check_methods)."""
    section = _get(params, "pretrain", "methods", name, default={}) or {}
    if _has_presets() and method_base(params, name) in registered("methods"):
        from cxrbench import config

        try:
            return config.method_params(params, name).get(key)
        except config.ParamsError:
            return None
    return section.get(key)


# ------------------------------------------------------------------------------------------------ datasets


def check_datasets(params: Mapping[str, Any]) -> Iterator[Problem]:
    datasets = _get(params, "data", "datasets", default={})
    for name, section in datasets.items():
        key = f"data.datasets.{name}"
        missing = _not_registered("dataset", name, key)
        if missing:
            yield missing
            continue
        yield from schema_problems(section, load_schema("datasets", name), key, f"dataset {name}")
        for dep in (section or {}).get("needs") or []:
            if dep not in datasets:
                yield Problem(f"{key}.needs", f"names {dep!r}, not in 'data.datasets'")


def check_matrix(params: Mapping[str, Any]) -> Iterator[Problem]:
    """Names in the matrix have their sections; datasets named by tasks and pretraining are defined."""
    matrix, datasets = params["matrix"], params["data"]["datasets"]
    for kind, where in (("methods", "pretrain.methods"), ("tasks", "evaluate.tasks")):
        sections = _get(params, *where.split("."), default={})
        for name in matrix[kind]:
            if name not in sections:
                yield Problem(f"matrix.{kind}", f"lists {name!r} but '{where}.{name}' is missing")
    for task in matrix["tasks"]:
        for ds in _get(params, "evaluate", "tasks", task, "datasets", default=[]):
            if ds not in datasets:
                yield Problem(f"evaluate.tasks.{task}.datasets", f"names {ds!r}, not in 'data.datasets'")
    corpus = params["pretrain"]["dataset"]
    if corpus not in datasets:
        yield Problem("pretrain.dataset", f"is {corpus!r}, not in 'data.datasets'")
    elif corpus in registered("datasets") and not load_schema("datasets", corpus).get("x-has-text"):
        with_text = [d for d in registered("datasets") if load_schema("datasets", d).get("x-has-text")]
        yield Problem("pretrain.dataset", f"dataset {corpus!r} has no reports to pretrain on; expected one of "
                      f"{with_text}")


def store_sizes(params: Mapping[str, Any]) -> dict[str, int]:
    """Dataset -> the side its prepared store is written at (``data.datasets.<name>.image_size``, else
    ``data.image_size``), for the datasets the matrix uses: the pretraining corpus and its tasks' datasets."""
    datasets = _get(params, "data", "datasets", default={}) or {}
    used = [_get(params, "pretrain", "dataset")]
    for task in _get(params, "matrix", "tasks", default=[]) or []:
        used += list(_get(params, "evaluate", "tasks", task, "datasets", default=[]) or [])
    default = _get(params, "data", "image_size")
    out = {}
    for ds in used:
        size = (datasets.get(ds) or {}).get("image_size", default) if ds in datasets else None
        if isinstance(size, int):
            out[ds] = size
    return out


def check_store_sizes(params: Mapping[str, Any]) -> Iterator[Problem]:
    """No encoder input larger than a store it reads: the recipes would have to upsample (refused at run time, by
    ``cxrbench.data.recipes``, after the pretraining it follows). A method's ``image_size`` against every store of
    the matrix (pretraining corpus and evaluated datasets), a task's own ``image_size`` (also ``by_dataset``)
    against its datasets' stores."""
    stores = store_sizes(params)
    if not stores:
        return
    for name in _get(params, "matrix", "methods", default=[]) or []:
        section = _get(params, "pretrain", "methods", name)
        if not isinstance(section, Mapping) or method_base(params, name) == "external":
            continue  # released weights: the checkpoint's own processor config sets the size (checked at run time)
        size = _method_value(params, name, "image_size")
        small = sorted(ds for ds, side in stores.items() if isinstance(size, int) and size > side)
        if small:
            sides = sorted({stores[d] for d in small})
            where = "; ".join(f"{side} px: {', '.join(d for d in small if stores[d] == side)}" for side in sides)
            yield Problem(f"pretrain.methods.{name}.image_size",
                          f"{size} px is larger than the prepared stores it reads ({where}); expected at most "
                          f"{sides[0]}, or stores of at least {size} px (data.image_size)")
    for task in _get(params, "matrix", "tasks", default=[]) or []:
        section = _get(params, "evaluate", "tasks", task, default={}) or {}
        for ds in section.get("datasets") or []:
            override = _get(section, "by_dataset", ds, default={}) or {}
            key = f"evaluate.tasks.{task}.by_dataset.{ds}.image_size" if "image_size" in override else \
                f"evaluate.tasks.{task}.image_size"
            size = override.get("image_size", section.get("image_size"))
            if isinstance(size, int) and ds in stores and size > stores[ds]:
                yield Problem(key, f"{size} px is larger than the prepared store of {ds} ({stores[ds]} px); "
                              f"expected at most {stores[ds]}")


def check_fractions(params: Mapping[str, Any]) -> Iterator[Problem]:
    """Every training fraction a run uses (100 % is the whole split) must be among the prepared ``data.fractions``."""
    prepared = set(params["data"]["fractions"]) | {100}
    unprepared: dict[tuple[str, int], list[str]] = {}
    for task in params["matrix"]["tasks"]:
        section = _get(params, "evaluate", "tasks", task, default={})
        key = f"evaluate.tasks.{task}.fractions" if "fractions" in section else "matrix.fractions"
        for f in task_fractions(params, task):
            if f not in prepared:
                unprepared.setdefault((key, f), []).append(task)
    for (key, f), tasks in sorted(unprepared.items()):
        yield Problem(key, f"fraction {f}% (tasks {tasks}) is never prepared; data.fractions is "
                      f"{params['data']['fractions']}")


# ------------------------------------------------------------------------------------------------ batches


def train_images(params: Mapping[str, Any], dataset: str) -> tuple[int, str] | None:
    """An upper bound on the training images of ``dataset`` and where it comes from, or None when unknown:
    the synthetic generator's size (MIMIC: patients, at most 3 frontal images each) or the paper's split."""
    if dataset not in registered("datasets"):
        return None
    schema = load_schema("datasets", dataset)
    syn = params["synthetic"]
    if syn.get("enabled"):
        n = (syn.get("sizes") or {}).get(dataset)
        if n is None:
            return None
        per = int(schema.get("x-synthetic-images-per-unit", 1))
        return n * per, f"synthetic.sizes.{dataset} = {n}" + (f" x {per} images" if per > 1 else "")
    sizes = schema.get("x-paper-split-sizes")
    return (int(sizes[0]), f"the published {dataset} training split") if sizes else None


def _origin(places: list[tuple[str, Mapping[str, Any]]], key: str) -> str:
    """The dotted key of the last place (highest priority) that sets ``key``."""
    for where, engine in reversed(places):
        if key in engine:
            return f"{where}.{key}"
    return f"{places[0][0]}.{key}"


def _batch_problem(places: list[tuple[str, Mapping[str, Any]]], n: int, how: str, what: str,
                   drop_last: bool) -> Problem | None:
    from cxrbench import config

    engine: dict[str, Any] = {}
    for _, e in places:
        engine = config.merge(engine, e)
    bs, accum = int(engine.get("batch_size", 8)), int(engine.get("grad_accum", 1))
    procs = int(engine.get("devices", 1))  # each process sees 1 / devices of the epoch
    per = bs * procs
    batches = n // per if drop_last else math.ceil(n / per)
    if accum <= batches:
        return None
    of = f"{bs}" + (f" on each of {procs} processes" if procs > 1 else "")
    return Problem(_origin(places, "grad_accum"), f"grad_accum {accum} > the at most {batches} batches of {of} per "
                   f"epoch of {what} (at most {n} training images: {how}); no optimiser step is possible; "
                   f"expected grad_accum <= {batches} (or a smaller {_origin(places, 'batch_size')})")


def check_batches(params: Mapping[str, Any]) -> Iterator[Problem]:
    yield from _pretrain_batches(params)
    yield from _task_batches(params)


def _pretrain_batches(params: Mapping[str, Any]) -> Iterator[Problem]:
    corpus = params["pretrain"]["dataset"]
    bound = train_images(params, corpus)
    if bound is None:
        return
    for name in params["matrix"]["methods"]:
        section = params["pretrain"]["methods"].get(name) or {}
        base = method_base(params, name)
        if base not in registered("methods") or not load_schema("methods", base).get("x-trains"):
            continue
        own = f"pretrain.methods.{name}.engine"
        places = [(own, _preset_engine(base, section.get("variant"))),
                  ("pretrain.engine", params["pretrain"]["engine"]), (own, section.get("engine") or {})]
        drop = bool(config_value(places, "drop_last", True))
        problem = _batch_problem(places, bound[0], bound[1], f"pretraining {name} on {corpus}", drop)
        if problem:
            yield problem


def _preset_engine(base: str, variant: Any) -> Mapping[str, Any]:
    """The engine values of the method's variant preset (under everything the user sets), if presets exist."""
    if not _has_presets():
        return {}
    from cxrbench import presets

    try:
        return presets.preset(base, variant).get("engine") or {}
    except KeyError:
        return {}  # an unknown variant: reported by check_methods


def config_value(places: list[tuple[str, Mapping[str, Any]]], key: str, default: Any) -> Any:
    for _, engine in reversed(places):
        if key in engine:
            return engine[key]
    return default


def _task_batches(params: Mapping[str, Any]) -> Iterator[Problem]:
    for task in params["matrix"]["tasks"]:
        if task not in registered("tasks") or not load_schema("tasks", task).get("x-trains"):
            continue
        section = params["evaluate"]["tasks"][task]
        for ds in section["datasets"]:
            bound = train_images(params, ds)
            if bound is None:
                continue
            for f in task_fractions(params, task):
                n = fraction_images(params, ds, bound[0], f)
                places = _task_places(params, task, ds, f)
                drop = bool(config_value(places, "drop_last", False))  # tasks keep the last partial batch
                problem = _batch_problem(places, n, bound[1], f"task {task} on {ds} at {f}%", drop)
                if problem:
                    yield problem


def fraction_images(params: Mapping[str, Any], dataset: str, n: int, fraction: int) -> int:
    """An upper bound on a training fraction of at most ``n`` images (``splits.draw_fractions``): round(p n) rows,
    or the stratified floor, at most labels x ``data.min_positives`` rows, when that is larger."""
    if fraction == 100:
        return n
    labels = int(load_schema("datasets", dataset).get("x-labels", 1))
    floor = labels * int(_get(params, "data", "min_positives", default=1) or 1)
    return max(math.ceil(n * fraction / 100), min(n, floor))


def _task_places(params: Mapping[str, Any], task: str, dataset: str, fraction: int) -> list:
    """Engine sections merged for one run cell, lowest priority first (as ``tasks._common.resolve``)."""
    section = params["evaluate"]["tasks"][task]
    places = [("evaluate.engine", params["evaluate"]["engine"]),
              (f"evaluate.tasks.{task}.engine", section.get("engine") or {})]
    for table, sel in (("by_dataset", dataset), ("by_fraction", fraction)):
        entries = section.get(table) or {}
        for k in (sel, str(sel)):
            if k in entries:
                places.append((f"evaluate.tasks.{task}.{table}.{k}.engine", (entries[k] or {}).get("engine") or {}))
                break
    return places


def check_scale(params: Mapping[str, Any]) -> Iterator[Problem]:
    """The paper scale runs on the real downloads: with the synthetic stand-in its numbers would be compared with
    the published ones as if they meant something."""
    if _get(params, "scale") == "paper" and _get(params, "synthetic", "enabled"):
        yield Problem("synthetic.enabled", "the paper scale needs the real downloads: set synthetic.enabled to false "
                      "and point data.datasets.<name>.raw at them (README: Real data), or use scale demo / custom "
                      "for synthetic data")


CHECKS = (check_methods, check_tasks, check_datasets, check_matrix, check_store_sizes, check_fractions, check_monitors,
          check_batches, check_scale)
