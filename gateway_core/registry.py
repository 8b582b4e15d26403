"""Typed registries filled once at start-up by the registration hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from gateway_core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named things of one kind (provider classes, balancer classes, ...).

    A registration hook receives the registry's :meth:`register` method. Names are unique:
    registering a name twice is a start-up error that names both plugins.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self.current_plugin = "?"

    def register(self, name: str, item: T) -> None:
        if name in self._items:
            raise ConfigError(
                f"{self.kind} {name!r} is registered twice "
                f"(by plugin {self._owners[name]!r} and by plugin {self.current_plugin!r})"
            )
        self._items[name] = item
        self._owners[name] = self.current_plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
