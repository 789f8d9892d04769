"""TOML tables onto dataclasses: types converted, unknown keys refused, every message naming the key.

:func:`build` makes an instance of any dataclass from a TOML table, so that a
configuration table's keys and defaults are the dataclass's own fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path

from edge_agent.errors import UsageError


class ConfigError(UsageError):
    """A configuration problem; the message names the file, the key and the fix."""



def type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def convert(value, tp, key: str):
    """``value`` as type ``tp`` or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string (in quotes), got {value!r}")
        return value
    if tp is Path:
        return Path(convert(value, str, key)).expanduser()
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {type_name(tp)}")


def build(cls, table, key: str, base=None, skip=()):
    """An instance of dataclass ``cls`` from a TOML table (unknown keys are errors).

    ``base`` supplies the defaults (a more general table's values).
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    for name in table:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else \
                f"; known keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"{key}.{name}: unknown key{hint}")
    values = {name: convert(value, hints[name], f"{key}.{name}") for name, value in table.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except TypeError as exc:
        missing = re.findall(r"'(\w+)'", str(exc))
        raise ConfigError(f"{key}: missing required key {', '.join(missing) or str(exc)}") from None
    except UsageError as exc:
        raise ConfigError(f"{key}: {exc}") from None
