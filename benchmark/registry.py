"""One registry for everything hadabench looks up by name: transforms, model families, metrics.

A ``Registry`` maps a name to a value, from three sources in this order: the built-in table
(values or lazy ``"module:attr"`` strings, resolved on first use), the installed entry points
of its group (``hadabench.transforms``, ``hadabench.families``, ``hadabench.metrics``), and
plugin files registered at run time (``benchmark.plugins``). Each entry records where it came
from and which code made it (provenance, recorded with every result). An entry point that
fails to load is kept as a broken entry with its error, never silently dropped, so that
``hadabench ls`` shows it and using it says why.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from benchmark.errors import UserError

__all__ = ["BUILT_IN", "Entry", "Registry"]

BUILT_IN = "built-in"


@dataclass
class Entry:
    name: str
    value: object | None  # None when broken
    source: str           # "built-in", "entry point (<distribution>)" or "file <path>"
    code: str = "hadabench"  # "hadabench", "<distribution>==<version>" or "sha256:<file's>"
    error: str | None = None  # why it could not be loaded

    @property
    def summary(self) -> str:
        """The first line of the value's docstring (or description), or why it is broken."""
        if self.error:
            return f"BROKEN: {self.error}"
        doc = getattr(self.value, "description", None) or inspect.getdoc(self.value) or ""
        return doc.splitlines()[0] if doc else ""


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    """Named values of one kind (``kind``: "transform", "model family", ...).

    ``check(name, value)`` raises ``UserError`` for a value of the wrong kind; it runs on
    every entry point and every registration.
    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, object] | None = None,
                 check: Callable[[str, object], None] | None = None):
        self.kind, self.group = kind, group
        self._builtins = dict(builtins or {})
        self._check = check or (lambda name, value: None)
        self._entries: dict[str, Entry] | None = None

    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            for name, value in self._builtins.items():
                self._entries[name] = Entry(name, _resolve(value) if isinstance(value, str) else value, BUILT_IN)
            for ep in entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else "?"
                ours = dist == "hadabench"
                source = BUILT_IN if ours else f"entry point ({dist})"
                code = "hadabench" if ours else f"{dist}=={ep.dist.version if ep.dist else '?'}"
                try:
                    value = ep.load()
                    self._check(ep.name, value)
                    self._entries[ep.name] = Entry(ep.name, value, source, code)
                except Exception as error:  # one broken plugin must not hide the others
                    self._entries[ep.name] = Entry(ep.name, None, source, code, f"{type(error).__name__}: {error}")
        return self._entries

    def __contains__(self, name: str) -> bool:
        return name in self.entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def builtin_names(self) -> list[str]:
        """The names of the built-in table, in its order (defaults that no plugin changes)."""
        return list(self._builtins)

    def names(self) -> list[str]:
        return sorted(self.entries())

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; ``UserError`` naming the known ones, or why it is broken."""
        entries = self.entries()
        if name not in entries:
            raise UserError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(entries))}")
        entry = entries[name]
        if entry.error:
            raise UserError(f"{self.kind} {name!r} ({entry.source}) cannot be loaded: {entry.error}")
        return entry

    def get(self, name: str):
        return self.entry(name).value

    def register(self, name: str, value, source: str, code: str = "hadabench") -> None:
        """Add ``name`` (a plugin file's); the same source may register it again, another may not."""
        if not isinstance(name, str) or not name:
            raise UserError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        self._check(name, value)
        entries = self.entries()
        if name in entries and entries[name].source != source:
            raise UserError(f"{self.kind} {name!r} already exists ({entries[name].source})")
        entries[name] = Entry(name, value, source, code)

    def reset(self) -> None:
        """Forget plugin files and read the entry points again (tests)."""
        self._entries = None
