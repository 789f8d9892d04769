"""Compact JSON lines: floats to 6 significant digits, NaN and infinities as null."""

from __future__ import annotations

import json
import math


def clean(value):
    """``value`` with floats rounded and non-finite floats replaced by ``None``.

    >>> clean({"a": 0.1234567891, "b": float("nan"), "c": [1e-9, 3]})
    {'a': 0.123457, 'b': None, 'c': [1e-09, 3]}
    """
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def dumps(obj) -> str:
    """One line of JSON for ``obj`` (see :func:`clean`)."""
    return json.dumps(clean(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
