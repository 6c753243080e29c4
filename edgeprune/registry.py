"""A tiny named registry: one per kind of plugin (pruning methods, architectures, ...).

Adding a plugin means decorating its class with ``@REGISTRY.register("name")``;
``edgeprune list`` shows every registry's names.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from edgeprune.errors import EdgepruneError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise EdgepruneError(
                f"unknown {self.kind} '{name}'", f"choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: str) -> bool:
        return name in self._items
