"""Name -> object registries for datasets, methods, tasks and backbones.

Every pluggable piece registers itself with a decorator in its own module::

    @METHODS.register("g2d")
    class G2D(Method): ...

A registry imports the modules of its package the first time it is queried (never at import of this module),
so adding a dataset, method, task or backbone means adding one file: no if/elif chains on names anywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of objects of one kind, filled by the modules of ``package``."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second object under the same name is an error."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._items[name]!r} and {obj!r})")
            self._items[name] = obj
            return obj

        return deco

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{self.package}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise ``KeyError`` listing the known ones.

        Looks in the module of the same name first, so one stage command imports only what it uses (start-up time
        is paid by every one of the matrix's jobs); falls back to importing the whole package."""
        if name not in self._items and not self._discovered:
            self._import_named(name)
        if name not in self._items:
            self._discover()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}") from None

    def _import_named(self, name: str) -> None:
        module = f"{self.package}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._discover()
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items


def _registry(kind: str, package: str) -> Registry[Any]:
    return Registry(kind, package)


DATASETS: Registry[Any] = _registry("dataset", "cxrbench.data.formats")
METHODS: Registry[Any] = _registry("method", "cxrbench.methods")
TASKS: Registry[Any] = _registry("task", "cxrbench.tasks")
BACKBONES: Registry[Any] = _registry("backbone", "cxrbench.models")
