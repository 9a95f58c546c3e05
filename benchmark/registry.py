"""One registry for everything hadabench looks up by name: transforms, model families, metrics,
model adapters and kernels.

A ``Registry`` maps a name to a value, from three sources in this order: the built-in table
(values or lazy ``"module:attr"`` strings, resolved on first use), the installed entry points
of its group (``hadabench.transforms``, ``.families``, ``.metrics``, ``.models``, ``.kernels``), and
plugin files registered at run time (``benchmark.plugins``). Each entry records where it came
from and which code made it (provenance, recorded with every result). An entry point that
fails to load is kept as a broken entry with its error, never silently dropped, so that
``hadabench ls`` shows it and using it says why.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from benchmark.errors import UserError

__all__ = ["BUILT_IN", "Entry", "Registry", "check_name", "contained", "describe_error"]

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
        try:  # a plugin's own attributes: anything at all
            doc = getattr(self.value, "description", None) or inspect.getdoc(self.value) or ""
            doc = doc if isinstance(doc, str) else ""
        except Exception:  # noqa: BLE001  (listing must not fail on one odd plugin)
            doc = ""
        first = next((line for line in doc.splitlines() if line.strip()), "")
        return " ".join(first.split())


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line, even for an exception whose ``str`` fails or spans lines."""
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r})"
    try:
        message = " ".join(str(error).split())
    except Exception:  # noqa: BLE001  (an exception with a broken __str__ is still reported)
        message = "<unprintable>"
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@contextlib.contextmanager
def contained(what: str, passing: tuple[type[BaseException], ...] = ()):
    """Run a plugin's code (its import, its factory): any exception, ``sys.exit()`` included,
    becomes a one-line ``UserError`` that starts with ``what``; ``KeyboardInterrupt`` still
    interrupts. ``passing``: exception types that go through as they are (``UserError`` always
    does, with ``what`` in front)."""
    try:
        yield
    except UserError as error:
        raise UserError(f"{what}: {describe_error(error).removeprefix('UserError: ')}") from None
    except passing:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001  (a plugin is the user's input)
        raise UserError(f"{what}: {describe_error(error)}") from error


def check_name(kind: str, name) -> str:
    """A registry name: a non-empty string on one line, without spaces at its ends; returned as a
    plain ``str``. ``UserError`` for anything else (a number, None, "", a name with a newline)."""
    if not isinstance(name, str):
        raise UserError(f"a {kind} name must be a string, not {type(name).__name__} {_short(name)}")
    name = str.__str__(name)
    if not name.strip():
        raise UserError(f"a {kind} name must be a non-empty string, not {name!r}")
    if not name.isprintable() or name != name.strip():
        raise UserError(f"a {kind} name must be printable, without spaces at its ends: {name!r}")
    return name


def _short(value) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = "?"
    return text if len(text) <= 40 else text[:37] + "..."


def _guarded(entry: Entry):
    """A plugin's factory (not a built-in one), called under ``contained``: its ValueError and
    TypeError go through (the caller reports refused parameters), anything else, ``sys.exit()``
    included, is one line naming the plugin."""
    value = entry.value
    if entry.source == BUILT_IN or not callable(value):
        return value

    @functools.wraps(value)
    def factory(*args, **kwargs):
        with contained(f"its factory (plugin {entry.source}) failed", (ValueError, TypeError)):
            return value(*args, **kwargs)

    return factory


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
                    check_name(self.kind, ep.name)
                    value = ep.load()
                    self._check(ep.name, value)
                    self._entries[ep.name] = Entry(ep.name, value, source, code)
                except UserError as error:  # one broken plugin must not hide the others
                    self._entries[ep.name] = Entry(ep.name, None, source, code, " ".join(str(error).split()))
                except (Exception, SystemExit) as error:  # noqa: BLE001  (its import may even call sys.exit())
                    self._entries[ep.name] = Entry(ep.name, None, source, code, describe_error(error))
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
        """The value to use: a plugin's factory comes wrapped, so that whatever it raises (but a
        ValueError or TypeError about its parameters) is one line naming the plugin."""
        return _guarded(self.entry(name))

    def register(self, name: str, value, source: str, code: str = "hadabench") -> None:
        """Add ``name`` (a plugin file's); the same source may register it again, another may not."""
        name = self.check_entry(name, value, source)
        self.entries()[name] = Entry(name, value, source, code)

    def check_entry(self, name, value, source: str) -> str:
        """What ``register`` checks, without registering: ``UserError`` for a name that is not a
        non-empty one-line string, a value of the wrong kind, or a name another source has."""
        name = check_name(self.kind, name)
        self._check(name, value)
        entries = self.entries()
        if name in entries and entries[name].source != source:
            raise UserError(f"{self.kind} {name!r} already exists ({entries[name].source})")
        return name

    def reset(self) -> None:
        """Forget plugin files and read the entry points again (tests)."""
        self._entries = None
