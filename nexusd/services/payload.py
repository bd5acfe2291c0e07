# SPDX-License-Identifier: MIT
"""Strict JSON for request payloads: one object, no duplicates, no floats.

The standard library's parser is used (it is well kept and bounded by the
payload cap that the server enforces before it runs); these hooks narrow it
to what nexusd accepts.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from nexusd.errors import BadPayload

__all__ = ["parse_json_object", "reject_unknown_keys"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            msg = "duplicate key in payload"
            raise BadPayload(msg)
        obj[key] = value
    return obj


def _no_float(_text: str) -> NoReturn:
    msg = "payload numbers must be whole numbers"
    raise BadPayload(msg)


def _no_constant(_text: str) -> NoReturn:
    msg = "payload must not contain NaN or Infinity"
    raise BadPayload(msg)


def parse_json_object(
    *, untrusted_payload: bytes, allow_empty: bool = False
) -> dict[str, Any]:
    """Return the payload as a JSON object, parsed strictly.

    The bytes must be UTF-8 without a BOM; the object has unique keys,
    whole numbers only. An empty payload is ``{}`` when *allow_empty*.

    Raises:
        BadPayload: anything else.
    """
    if not untrusted_payload.strip() and allow_empty:
        return {}
    try:
        untrusted_text = untrusted_payload.decode("utf-8", errors="strict")
        untrusted_obj = json.loads(
            untrusted_text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        msg = "payload is not UTF-8"
        raise BadPayload(msg) from None
    except BadPayload:
        raise
    except (ValueError, RecursionError):
        msg = "payload is not a JSON object"
        raise BadPayload(msg) from None
    if not isinstance(untrusted_obj, dict):
        msg = "payload is not a JSON object"
        raise BadPayload(msg)
    return untrusted_obj


def reject_unknown_keys(untrusted_obj: dict[str, Any], known: set[str]) -> None:
    """Raise BadPayload if *untrusted_obj* has a key outside *known*."""
    unknown = set(untrusted_obj) - known
    if unknown:
        msg = f"unknown keys in payload: {len(unknown)} (allowed: "
        msg += ", ".join(sorted(known)) + ")"
        raise BadPayload(msg)
