"""Name -> factory registries, so CLIs can list choices and configs can be validated by name; plugins
(`ap_core.plugins`) are loaded before the first read."""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ap_core.errors import ConfigError
from ap_core.plugins import load_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories (or method objects) with one-line errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        """Remove `name` (a plugin or a test that registered an entry for a while)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)
