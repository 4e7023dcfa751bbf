"""Name -> factory registries, so CLIs can list choices and configs can be validated by name; plugins
(`ap_core.plugins`) are loaded before the first read. A prefix (`tv:`) stands for a whole zoo of names too many to
list: its resolver turns the rest of the name into an entry, or a one-line error."""

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
        self._prefixes: dict[str, tuple[Callable[[str], T], str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def register_prefix(self, prefix: str, description: str) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
        """Resolve every name `<prefix>:<rest>` with the decorated function of `rest`; `description` (what the
        prefix names) is listed with the names."""

        def decorator(resolve: Callable[[str], T]) -> Callable[[str], T]:
            if prefix in self._prefixes:
                raise ValueError(f"{self.kind} prefix {prefix!r} registered twice")
            self._prefixes[prefix] = (resolve, description)
            return resolve

        return decorator

    def prefixes(self) -> dict[str, str]:
        """Each registered prefix, with what its names stand for."""
        return {f"{prefix}:<name>": description for prefix, (_, description) in sorted(self._prefixes.items())}

    def unregister(self, name: str) -> None:
        """Remove `name` (a plugin or a test that registered an entry for a while)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        load_plugins()
        if name in self._entries:
            return self._entries[name]
        prefix, separator, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        if separator and prefix in self._prefixes:
            return self._prefixes[prefix][0](rest)
        raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join([*self.names(), *self.prefixes()])}")

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
