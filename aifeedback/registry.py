"""Registries: the typed, listable tables behind every extension point (stages, families, losses, scorers, data
sources, offline models).

An entry is a small frozen dataclass with at least `name` and `help`; a registry keeps them in registration order.
Everything else (the command line, `choices` of a config field, `aif models`, error messages) is derived from the
registry, so a name is written once. A bad name raises UnknownNameError listing the valid ones, with a did-you-mean.
This module is light (no torch): the command line reads registries before any model code is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

from aifeedback.errors import AifError


class Named(Protocol):
    name: str
    help: str


E = TypeVar("E", bound=Named)


class UnknownNameError(AifError, ValueError):
    """A name that is not in a registry; the message lists the valid names."""


class Registry(Mapping[str, E]):
    """Named entries of one extension point, e.g. `LOSSES = Registry("loss", [Loss("dpo", ...), ...])`.

    A read-only mapping name -> entry in registration order (`for name in LOSSES`, `LOSSES.values()`)."""

    def __init__(self, kind: str, entries: Iterable[E] = ()):
        self.kind = kind
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: E) -> E:
        """Add an entry (a name may be registered once)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} '{entry.name}' is registered twice")
        self._entries[entry.name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered."""
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}';{hint} valid: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default: E | None = None) -> E | None:
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def describe(self) -> dict[str, str]:
        """Name -> one-line help, for listings."""
        return {e.name: e.help for e in self.values()}
