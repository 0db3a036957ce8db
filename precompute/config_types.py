"""Type checks of raw config values (TOML or a manifest's ``config``) against the dataclass fields.

Every field of every config section is checked before any range check runs, so a quoted number
(``lr = "0.01"``), a bare value where a list is expected (``hidden = 32``) or a boolean where a
count is expected (``epochs = true``) is one line naming the key, not a ``TypeError`` traceback.
Booleans are never accepted as numbers; integers are accepted where a float is expected.
"""

from __future__ import annotations

import os
import types
import typing
from typing import Any

from precompute.errors import ConfigError


def _describe(hint: Any) -> str:
    """A human name for a type hint: ``list[int] | None`` -> ``a list of integers (or left out)``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + (" (or left out)" if type(None) in args else "")
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a TOML value) fits the type hint ``hint``."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and (not args or all(type_ok(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(type_ok(v, args[1]) for v in value.values()))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str | os.PathLike)  # a Path where a file name is expected (Python API)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_types(cls: type, values: dict[str, Any], prefix: str, source: str) -> None:
    """Raise ConfigError for the first value in ``values`` that does not fit ``cls``'s field type."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None or type_ok(value, hint):
            continue
        raise ConfigError(f"{source}: {prefix}{key} must be {_describe(hint)} (got {value!r}, "
                          f"{'a boolean' if isinstance(value, bool) else type(value).__name__}); "
                          "fix it in the config file or the matching flag")
