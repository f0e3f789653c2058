"""Named builders of one kind (classifier backbones, search spaces), added with a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Builders of one `kind` by name: `@registry.register("name")` adds one (a name only
    once), `get` finds one, an unknown name raising ValueError that lists the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Builder:
        if name not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._builders[name]
