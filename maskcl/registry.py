"""A tiny name → object registry (datasets, backbones, protocols).

Duplicates are an error, and an unknown name lists the valid ones, so a typo in params.yaml
fails with the list of choices instead of a bare ``KeyError``.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from maskcl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; use ``@REGISTRY.register("name")`` as a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} '{name}'; expected one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
