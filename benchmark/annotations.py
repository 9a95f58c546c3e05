"""Checking a value against a type annotation: the run configuration's keys and a transform
factory's hyper-parameters are both checked this way, so their errors read alike.

``bool`` is not a number here (``True`` is no valid ``steps``); an ``int`` is a ``float``.
Annotations this cannot check (``Any``, most generics) accept anything.
"""

from __future__ import annotations

import inspect
import types
import typing

__all__ = ["conforms", "parse_value", "type_name"]


def conforms(value, hint) -> bool:
    """Whether ``value`` fits ``hint``: a class, a union, Optional, Literal, ``list[X]``."""
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value) if args else isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(origin or hint, type):
        return isinstance(value, origin or hint)
    return True


def type_name(hint) -> str:
    """How an error message names ``hint``: "an integer", "a string or none", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " or ".join(map(repr, args))
    if origin is list:
        return f"a list (of {getattr(args[0], '__name__', args[0])})" if args else "a list"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "none", None: "none"}.get(hint, getattr(hint, "__name__", str(hint)))


def parse_value(text: str):
    """The value a ``key=value`` pair means: an integer, a number, true/false/none, else the text."""
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)
