"""A strict YAML reader for parameter files: duplicate keys are errors, and every error names file, line and column.

PyYAML's ``safe_load`` keeps the last of two equal keys silently (``lr: 1e-3`` ... ``lr: 1e-2`` trains with the
second) and reports a syntax error as a traceback whose ``<unicode string>`` hides the file. :func:`load_file` reads
with :class:`StrictLoader` (a ``SafeLoader`` whose mappings refuse repeated keys) and raises :class:`YamlError`, one
line per problem: ``params.yaml:12:5: duplicate key 'lr' (first at line 10)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError


class YamlError(ValueError):
    """A parameter file cannot be read: the message starts with ``file:line:column:``."""


#: libyaml's parser when PyYAML was built with it (5x faster: Snakemake parses params.yaml at every invocation)
_SAFE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_SAFE):  # type: ignore[misc, valid-type]
    """A safe loader whose mappings reject a key that appears twice (merge keys ``<<`` keep YAML's meaning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise ConstructorError(None, None, f"duplicate key {key!r} (first at line {first})",
                                       key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def _message(err: yaml.YAMLError, source: str) -> str:
    """``file:line:col: problem`` (1-based) from a PyYAML error, with its context when it adds anything."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if isinstance(err, ConstructorError) and "duplicate key" in problem:
        return f"{_where(source, mark)}: {problem}"
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    detail = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else ""
    return f"{_where(source, mark)}: YAML syntax error: {problem}{detail}"


def loads(text: str, source: str = "<string>") -> Any:
    """Parse ``text`` strictly; ``source`` names it in errors."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as err:
        raise YamlError(_message(err, source)) from None


def load_file(path: str | Path) -> Any:
    """Parse the YAML file at ``path`` strictly (:func:`loads`); a missing file raises ``FileNotFoundError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} not found (run from the project root or pass --params)")
    return loads(path.read_text(), str(path))
