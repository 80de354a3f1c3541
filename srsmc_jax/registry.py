"""Named registries of strategies: one per kind, each in the module that owns the kind.

A registry maps a short name (what ``SMCConfig`` and the command line accept) to a *factory* that
builds the strategy object from the config knobs it declares. ``SMCConfig(select="threshold",
threshold=0.7)`` is ``SELECT.build("threshold", {"threshold": 0.7})``, i.e. ``Threshold(rho=0.7)``.
A name can be registered once; a second registration is an error (so every name has one meaning).

    from srsmc_jax.select import SELECT, SelectPolicy
    SELECT.register("every_other", lambda: EveryOther(), help="reveal odd rows, then even rows")
    SMCConfig(select="every_other")          # and `srsmc sample --select every_other`
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "Entry"]


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: ``factory(**{knob: config value})`` builds the strategy.

    knobs: the ``SMCConfig`` fields the factory reads (passed as keyword arguments of the same name).
    help: one line for ``--help`` and error messages.
    """

    name: str
    factory: Callable[..., T]
    knobs: tuple[str, ...]
    help: str


class Registry(Generic[T]):
    """Names of one kind of strategy (SELECT policies, resamplers, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], *, knobs: tuple[str, ...] = (), help: str = "") -> None:
        """Register ``name``; a name already present is a ValueError (one meaning per name)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: a registered name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind}: the name {name!r} is already registered")
        self._entries[name] = Entry(name, factory, tuple(knobs), help)

    def register_value(self, name: str, value: T, *, help: str = "") -> None:
        """Register a strategy that needs no knobs (a function, a frozen dataclass instance)."""
        self.register(name, lambda: value, help=help)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names()} "
                             "or a strategy object") from None

    def build(self, name: str, knob_values: Mapping[str, Any]) -> T:
        entry = self.entry(name)
        return entry.factory(**{k: knob_values[k] for k in entry.knobs})

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
