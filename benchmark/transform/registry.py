"""The transform registry: built-in and third-party transforms by name, and their creation.

The six baselines are registered exactly like a third-party plugin: by an entry point of the
``hadabench.transforms`` group in ``pyproject.toml`` naming a factory (a callable that takes
the hyper-parameters as keyword arguments and returns a ``Transform``). A plugin file
registers ``TRANSFORMS = {"name": factory, ...}`` (``benchmark.plugins``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from benchmark.annotations import conforms, type_name
from benchmark.errors import UserError
from benchmark.registry import Entry, Registry
from benchmark.transform.base import Transform

__all__ = ["BASELINES", "CONFIG_ALIASES", "TRANSFORMS", "check_parameters", "config_alias", "create_transform",
           "parameter_defaults", "transforms"]

# The paper's six, in its order (the published tables and the default run list them), each
# with its torchao-style alias in the Python API (``benchmark.HadaNormConfig`` is the
# "hadanorm" factory itself, looked up here so that the core never imports ``baselines/``).
CONFIG_ALIASES = {"none": "NoTransformConfig", "smoothquant": "SmoothQuantConfig", "quarot": "QuaRotConfig",
                  "sdcb": "SDCBConfig", "dyncenter": "DynCenterConfig", "hadanorm": "HadaNormConfig"}
BASELINES = tuple(CONFIG_ALIASES)


def _check_factory(name: str, factory) -> None:
    if not callable(factory):
        raise UserError(f"transform {name!r}: its factory is a {type(factory).__name__}, not a callable")


TRANSFORMS = Registry("transform", "hadabench.transforms",
                      {"affine": "benchmark.transform.base:affine"},  # the whole design space
                      check=_check_factory)


def transforms() -> dict[str, Entry]:
    """All known transforms by name (built-in, entry points, loaded plugin files)."""
    entries = TRANSFORMS.entries()
    missing = [name for name in BASELINES if name not in entries]
    if missing:
        raise RuntimeError(f"built-in transforms {missing} are not registered: install the "
                           "package (pip install -e .) so its entry points exist")
    return entries


def config_alias(name: str):
    """The factory behind a ``...Config`` alias (``AttributeError`` if ``name`` is none)."""
    for transform, alias in CONFIG_ALIASES.items():
        if alias == name:
            transforms()
            return TRANSFORMS.get(transform)
    raise AttributeError(name)


def parameter_defaults(entry: Entry) -> dict:
    """A transform's hyper-parameters with their defaults, from its factory's signature."""
    if entry.value is None:
        return {}
    return {name: p.default for name, p in inspect.signature(entry.value).parameters.items()
            if p.default is not inspect.Parameter.empty}


def create_transform(name: str, **params) -> Transform:
    """Instantiate a registered transform with its hyper-parameters."""
    transforms()
    factory = TRANSFORMS.get(name)
    check_parameters(name, factory, params)
    try:
        transform = factory(**params)
    except (ValueError, TypeError) as error:  # the factory refused these parameters
        raise UserError(f"transform {name!r}: {error}") from error
    if not isinstance(transform, Transform):
        raise UserError(f"transform {name!r}: its factory returned {type(transform).__name__}, "
                        "not a benchmark.Transform")
    return transform


def check_parameters(name: str, factory: Callable, params: dict) -> None:
    """Refuse (ValueError) a parameter the factory does not take, or a value whose type
    matches neither the parameter's annotation nor, without one, its default's type."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation that cannot be resolved: no types
        signature = inspect.signature(factory)
    parameters = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [k for k in params if k not in parameters and not accepts_any]
    if unknown:
        raise UserError(f"transform {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(parameters) or 'nothing'}")
    for key, value in params.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        expected = parameter.annotation
        if expected is inspect.Parameter.empty:
            default = parameter.default
            if default is inspect.Parameter.empty or default is None:
                continue
            expected = type(default)
        if not conforms(value, expected):
            raise UserError(f"transform {name!r}: {key}={value!r} is a {type(value).__name__}, "
                             f"expected {type_name(expected)}")
