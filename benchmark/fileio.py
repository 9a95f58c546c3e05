"""Files hadabench writes and reads: atomic writes, and JSON checked against a small schema
language before it is used (every file another process or person wrote is input).

Infinite floats are written as the strings "inf", "-inf" and "nan": JSON has no infinity.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from benchmark.errors import UserError

__all__ = ["MAX_DEPTH", "Each", "Key", "OptionalKey", "check", "check_output_path", "parse_bounded", "path_name",
           "read_json", "schema_rows", "sha256_file", "sweep_temporaries", "write_atomic", "write_json"]

MAX_DEPTH = 64  # no file hadabench reads nests deeper; a deeper one is refused before it is used
MAX_BYTES = 1 << 30  # 1 GiB: larger than any results file or caption file (COCO train: 90 MB)

_UMASK = os.umask(0)
os.umask(_UMASK)


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _shown(path) -> str:
    """A path for a one-line message: as written, or quoted when it holds a control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _cannot_write(path: Path, error: OSError) -> UserError:
    why = {errno.ENAMETOOLONG: "a name in it is too long", errno.ENOSPC: "no space left on the device",
           errno.EISDIR: "it is a folder", errno.ENOTDIR: "a file is in the way of its folder",
           errno.EEXIST: "a file is in the way of its folder"}.get(error.errno)
    why = why or " ".join(str(error.strerror or error).split())
    return UserError(f"cannot write {_shown(path)}: {why}")


def write_atomic(path: str | Path, data: bytes | str | Callable[[Path], object]) -> None:
    """Write to a uniquely named temporary file beside ``path`` and rename it over: readers
    see the old file or the new one, never half of one, whatever kills the process, and two
    processes writing one path never share a temporary file. ``data``: the bytes or text, or
    a function that writes the file at the path it is given (an image's or tensors' saver).

    An ``OSError`` (a name too long, a full disk, no permission, a folder in the way) is a
    one-line ``UserError`` naming ``path``; the old file is left as it was and the temporary
    file is always removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        # the temporary name is short: a target name near the 255-byte limit must still work
        # the writer's pid in the name: a temporary file of a killed writer is known as such
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(Path(tmp))
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        raise _cannot_write(path, error) from error
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)


def sweep_temporaries(folder: str | Path, recursive: bool = False) -> int:
    """Remove the temporary files that writers killed mid-write left in ``folder`` (``kill -9``
    leaves no chance to clean up): those of ``write_atomic`` whose writer process is gone.
    Returns how many were removed."""
    removed = 0
    folder = Path(folder)
    try:
        candidates = list(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"))
    except OSError:
        return 0
    for path in candidates:
        parts = path.name.rsplit(".", 3)  # "", name, pid, random.tmp -> [..., pid, "XXXX", "tmp"]
        pid = parts[-3] if len(parts) == 4 else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # someone else's process
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


NAME_MAX, PATH_MAX = 255, 4096  # bytes: Linux's limits, and the usual ones elsewhere


def path_name(value: str, what: str = "a path") -> str:
    """``value`` when the system could name it: no NUL, no component over ``NAME_MAX`` bytes, at
    most ``PATH_MAX`` in all; else one ``UserError`` line, before anything opens or creates it.
    The one check of every path a user gives (flags, positionals, configuration keys)."""
    text = str(value)
    shown = _shown(text if len(text) <= 80 else text[:77] + "...")
    if "\0" in text:
        raise UserError(f"{what} {shown} holds a NUL character")
    encoded = [part.encode("utf-8", "surrogateescape") for part in text.split("/")]
    if any(len(part) > NAME_MAX for part in encoded) or len(text.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise UserError(f"{what} {shown}: a name in it is too long (over {NAME_MAX} bytes, or {PATH_MAX} in all)")
    return text


def _probe(path: Path, test: str) -> bool:
    """``path.exists()``, ``is_dir()``, ``is_file()``: False, not an OSError, for a name too long."""
    try:
        return getattr(path, test)()
    except (OSError, ValueError):
        return False


def check_output_path(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse (``UserError``, one line) an output that is a folder or that would destroy an
    input: ``output`` resolved (links followed) is one of ``inputs``, or an existing file (or the
    results.json) inside an input run folder: an input folder holding results.json, the folder of
    an input file, or the run folders one level inside an input folder (a folder of runs, as
    ``hadabench leaderboard`` reads it). A new file beside the inputs is fine."""
    try:
        target = Path(output).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a loop of links, a NUL byte
        raise UserError(f"cannot write {_shown(output)}: {error}") from None
    try:
        target.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass  # a new file; a file in the way of its folder is the writer's to say
    except OSError as error:  # a name too long, no permission to look
        raise _cannot_write(Path(output), error) from None
    if _probe(target, "is_dir"):
        raise UserError(f"{_shown(output)} is a folder: give the file to write")
    for given in inputs:
        try:
            source = Path(given).resolve()
        except (OSError, RuntimeError, ValueError):
            continue  # reading it will say what is wrong with it
        if target == source:
            raise UserError(f"{_shown(output)} is an input: writing it would destroy it")
        if _probe(source, "is_file"):
            folders = [source.parent]
        elif _probe(source / "results.json", "exists"):
            folders = [source]
        else:
            try:
                folders = [p.parent for p in source.glob("*/results.json")]
            except (OSError, ValueError):
                folders = []
        for folder in folders:
            if target.is_relative_to(folder) and (_probe(target, "exists") or target.name == "results.json"):
                raise UserError(f"{_shown(output)} is in the input run folder {_shown(folder)}: "
                                "writing it would destroy the run's files")


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, document: dict) -> None:
    write_atomic(path, json.dumps(_encode(document), indent=1, sort_keys=False) + "\n")


# -- reading: every file another process or person wrote is checked before it is used --

class Key:
    """A key that must be present (in a ``{key: spec}`` object spec), with what it means: the
    documentation of a file's fields is generated from these (``schema_rows``)."""

    def __init__(self, spec, doc: str = ""):
        self.spec, self.doc = spec, doc


class OptionalKey(Key):
    """A key that may be absent (in a ``{key: spec}`` object spec)."""


class Each:
    """An object whose values all match ``spec`` (keys: any string; ``key``: what a key names)."""

    def __init__(self, spec, key: str = "name"):
        self.spec, self.key = spec, key


def _describe(spec) -> str:
    if isinstance(spec, type):
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                dict: "an object", list: "a list", type(None): "null"}.get(spec, spec.__name__)
    if spec is None:
        return "null"
    if isinstance(spec, (set, frozenset)):
        return " or ".join(map(json.dumps, sorted(spec)))
    if isinstance(spec, tuple):
        return " or ".join(_describe(s) for s in spec)
    if isinstance(spec, list):
        plural = {str: "strings", int: "integers", float: "numbers", dict: "objects", bool: "booleans"}
        inner = spec[0]
        if isinstance(inner, type) and inner in plural:
            return f"a list of {plural[inner]}"
        return f"a list (each {_describe(inner)})"
    return "an object"


def _matches(value, spec) -> bool:
    try:
        check(value, spec)
        return True
    except ValueError:
        return False


def check(value, spec, where: str = "") -> None:
    """Raise a one-line ValueError naming the first place where ``value`` does not match
    ``spec``: a type, None, a set of allowed values, a tuple of alternatives, ``[spec]`` (a
    list), ``{key: spec}`` (an object with these keys; others are allowed), ``Each(spec)``."""
    if isinstance(spec, tuple):
        if not any(_matches(value, s) for s in spec):
            # an object that has the right shape but a wrong value inside: say where
            for s in spec:
                if isinstance(s, (dict, Each)) and isinstance(value, dict):
                    check(value, s, where)
            raise UserError(f"{where or 'the document'} is {_short(value)}, not {_describe(spec)}")
        return
    if isinstance(spec, (dict, Each)):
        if not isinstance(value, dict):
            raise UserError(f"{where or 'the document'} is {_short(value)}, not an object")
        items = ((k, s) for k, s in spec.items()) if isinstance(spec, dict) else \
            ((k, OptionalKey(spec.spec)) for k in value)
        for key, sub in items:
            place = (f"{where}.{key}" if where else key) if isinstance(spec, dict) else f"{where}[{_short(key)}]"
            if key not in value:
                if not isinstance(sub, OptionalKey):
                    raise UserError(f"{place} is missing")
                continue
            check(value[key], sub.spec if isinstance(sub, Key) else sub, place)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise UserError(f"{where} is {_short(value)}, not {_describe(spec)}")
        for index, item in enumerate(value):
            check(item, spec[0], f"{where}[{index}]")
        return
    if isinstance(spec, (set, frozenset)):
        ok = isinstance(value, str) and value in spec
    elif spec is None or spec is type(None):
        ok = value is None
    elif spec is float:  # an integer too large for a float (400 digits) is no number either
        ok = isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                          and abs(value) <= _LARGEST)
    elif spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec)
    if not ok:
        raise UserError(f"{where} is {_short(value)}, not {_describe(spec)}")


_LARGEST = 1.7976931348623157e308


def _short(value) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _depth_at_most(document, limit: int) -> bool:
    """Whether ``document`` nests at most ``limit`` deep (iteratively: no recursion to exhaust)."""
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def parse_bounded(path: str | Path, what: str, parse: Callable[[str], object], *, syntax: str = "",
                  max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, errors: tuple = ()):
    """Read a text file and parse it, bounded before anything else looks at it: at most
    ``max_bytes`` (checked before reading), UTF-8, nested at most ``max_depth`` deep (a parser's
    own recursion limit is met as the same error). Anything wrong is one ``UserError`` naming the
    file; ``errors``: the parser's own exception types, reported as "not a valid <what>"."""
    path = Path(path)
    shown = _shown(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UserError(f"{shown}: cannot read it (a folder, not a {what})")
        if size > max_bytes:
            raise UserError(f"{shown}: {size:,} bytes, more than a {what} may hold ({max_bytes:,})")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{shown}: no such {what} (not found)") from None
    except OSError as error:
        raise UserError(f"{shown}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{shown}: not a {what} (not UTF-8 text: byte {error.start})") from None
    try:
        document, deep = parse(text), False
    except RecursionError:
        document, deep = None, True
    except errors as error:
        raise UserError(f"{shown}: not a {what} (invalid {syntax}: {' '.join(str(error).split())})") from None
    if deep or not _depth_at_most(document, max_depth):
        raise UserError(f"{shown}: not a {what}: nested deeper than {max_depth} levels")
    return document


def read_json(path: str | Path, spec, what: str, max_bytes: int = MAX_BYTES) -> dict:
    """A JSON file, bounded (``parse_bounded``) and checked against ``spec``; anything wrong with
    it is one ``UserError`` line that names the file and the field."""
    document = parse_bounded(path, what, json.loads, syntax="JSON", max_bytes=max_bytes,
                             errors=(json.JSONDecodeError,))
    try:
        check(document, spec)
    except ValueError as error:
        raise UserError(f"{_shown(path)}: not a valid {what}: {error}") from None
    return document


def schema_rows(spec, where: str = "") -> list[tuple[str, str, str]]:
    """(path, type, meaning) for every documented key of ``spec``, in order: the reference table
    of a file's fields (docs/results-schema.md is generated from it). ``<name>`` stands for a key
    of a free-keyed object and ``[]`` for the items of a list."""
    rows = []
    spec = spec.spec if isinstance(spec, Key) else spec
    if isinstance(spec, tuple):  # the alternatives' structure: the first object or list among them
        spec = next((s for s in spec if isinstance(s, (dict, Each, list))), spec)
    if isinstance(spec, Each):
        return schema_rows(spec.spec, f"{where}.<{spec.key}>")
    if isinstance(spec, list):
        return schema_rows(spec[0], f"{where}[]")
    if isinstance(spec, dict):
        for key, sub in spec.items():
            place = f"{where}.{key}" if where else key
            inner = sub.spec if isinstance(sub, Key) else sub
            kind = _describe(inner) + (" (optional)" if isinstance(sub, OptionalKey) else "")
            rows.append((place, kind, sub.doc if isinstance(sub, Key) else ""))
            rows.extend(schema_rows(inner, place))
    return rows
