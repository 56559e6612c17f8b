"""One registry pattern for every "look it up by name" table of attnlab.

Mechanisms (:mod:`attnlab.layers.registry`), benchmark suites (:mod:`attnlab.bench.core`) and verification
checks (:mod:`attnlab.verify.core`) are each a :class:`Registry` of their own item type: names are unique,
looked up with an error that lists the valid ones, and kept in registration order (so listings are stable).

A registry may have a ``load`` hook that fills it with the built-in entries: it runs once, before the first
read (``get``/``names``/``items``/``in``). It is a callable, or the name of the package whose import registers
them (its modules register themselves). Registering never triggers it, so a module may register while that
import is under way.

This module imports nothing from attnlab, and nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterable, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one kind by unique name, in registration order.

    Args:
        kind: what an item is, for messages (``"mechanism"`` gives ``unknown mechanism 'foo'; registered: ...``).
        load: called once before the first read, to register the built-in items; a string names a module to import
            instead (``None``: nothing to load).
    """

    def __init__(self, kind: str, *, load: Callable[[], object] | str | None = None) -> None:
        self.kind = kind
        self._load = (lambda: importlib.import_module(load)) if isinstance(load, str) else load
        self._loaded = load is None
        self._entries: dict[str, T] = {}

    @property
    def entries(self) -> dict[str, T]:
        """The live ``{name: item}`` dict (no loading). Code registers with :meth:`register`; tests may
        ``monkeypatch.setitem`` an entry here so that it disappears after the test."""
        return self._entries

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before loading: a module that reads the registry while it loads does not recurse
        try:
            self._load()  # type: ignore[misc]
        except BaseException:
            self._loaded = False
            raise

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``, which must be new; returns ``item``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered as ``name``; an unknown name raises a ``ValueError`` listing the valid ones."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {self._known()}") from None

    def get_all(self, names: Iterable[str]) -> list[T]:
        """The items registered as ``names``, in that order; every unknown name is reported in one ``ValueError``."""
        self._ensure_loaded()
        names = list(names)
        unknown = [n for n in names if n not in self._entries]
        if len(unknown) == 1:
            self.get(unknown[0])
        if unknown:
            raise ValueError(f"unknown {self.kind}s {', '.join(map(repr, unknown))}; registered: {self._known()}")
        return [self._entries[n] for n in names]

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._ensure_loaded()
        return list(self._entries)

    def items(self) -> list[T]:
        """Every registered item, in registration order."""
        self._ensure_loaded()
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} registered)"

    def _known(self) -> str:
        return ", ".join(sorted(self._entries))
