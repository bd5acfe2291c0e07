# SPDX-License-Identifier: MIT
"""JSON-like values to GLib variants and back, for ``a{sv}`` records.

D-Bus has no null: a key whose value is None is left out of a record, and
a None inside a list is dropped. Integers are ``x`` (int64), so a value
outside that range is refused rather than wrapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gi.repository import GLib

__all__ = ["record", "records", "to_variant"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def to_variant(value: object) -> GLib.Variant:
    """Wrap *value* (str, bool, int, float, list, dict) as a GLib variant.

    Raises:
        TypeError: a value of another type, or an int outside int64.
    """
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            msg = f"integer out of int64 range: {value}"
            raise TypeError(msg)
        return GLib.Variant("x", value)
    if isinstance(value, float):
        return GLib.Variant("d", value)
    if isinstance(value, str):
        return GLib.Variant("s", value)
    if isinstance(value, Mapping):
        return GLib.Variant("a{sv}", _entries(value))
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        items = [v for v in value if v is not None]
        if items and all(isinstance(v, str) for v in items):
            return GLib.Variant("as", items)
        return GLib.Variant("av", [to_variant(v) for v in items])
    msg = f"no D-Bus form for {type(value).__name__}"
    raise TypeError(msg)


def _entries(value: Mapping[Any, Any]) -> dict[str, GLib.Variant]:
    return {str(k): to_variant(v) for k, v in value.items() if v is not None}


def record(value: Mapping[str, Any]) -> dict[str, GLib.Variant]:
    """*value* as the Python side of an ``a{sv}`` argument."""
    return _entries(value)


def records(values: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """*values* as the Python side of an ``aa{sv}`` argument."""
    return [_entries(v) for v in values]
