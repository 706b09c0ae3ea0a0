"""Name -> builder registries (timm style): a new objective is one file that registers itself.

Each registry names the modules that register into it (`plugins`) and imports them on first use, so
`load_config` works in a fresh interpreter without anything importing the objectives first, and the
registry module itself imports nothing from the package.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[T]):
    """A named table of builders; `get` fails with the valid names and the closest one.

    A builder has a `Config` dataclass: the schema of its config section (`config=` sets it on a
    function builder)."""

    def __init__(self, kind: str, plugins: Sequence[str] = ()) -> None:
        self.kind = kind
        self.plugins = tuple(plugins)
        self._items: dict[str, T] = {}
        self._loaded = not plugins

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            if config is not None:
                item.Config = config  # type: ignore[attr-defined]
            self._items[name] = item
            return item

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.plugins:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise KeyError(
                f"unknown {self.kind} '{name}'{closest(name, self.names())}; known: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: Any) -> bool:
        self._load()
        return name in self._items


OBJECTIVES: Registry[Any] = Registry("objective", ["ssl_distill.objectives"])
DATASETS: Registry[Any] = Registry("dataset", ["ssl_distill.data"])
TRANSFORMS: Registry[Any] = Registry("transform", ["ssl_distill.data.transforms"])
BACKBONES: Registry[Any] = Registry("model.kind", ["ssl_distill.backbones"])
