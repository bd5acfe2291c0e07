# SPDX-License-Identifier: MIT
"""Where each table and key of a TOML text is, so that errors found after
``tomllib`` parsed it can name their line.

``tomllib`` gives line numbers for syntax errors only. This scanner reads
text that ``tomllib`` already accepted and records the first line of each
table header and ``key =`` line under its full key path; it does not parse
values, it skips the inside of multi-line strings and arrays.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence

__all__ = ["KeyLines"]

KeyPath = tuple[str, ...]
_BARE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
)


def _split_keys(text: str) -> tuple[KeyPath, str] | None:
    """Split a dotted key at the start of *text*; return it and the rest."""
    keys: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            return None
        quote = text[pos]
        if quote in "\"'":
            end = pos + 1
            while end < len(text) and text[end] != quote:
                end += 2 if quote == '"' and text[end] == "\\" else 1
            if end >= len(text):
                return None
            try:
                key = tomllib.loads(f"k = {text[pos : end + 1]}")["k"]
            except tomllib.TOMLDecodeError:
                return None
            pos = end + 1
        else:
            end = pos
            while end < len(text) and text[end] in _BARE:
                end += 1
            if end == pos:
                return None
            key = text[pos:end]
            pos = end
        keys.append(key)
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(keys), text[pos:]


class KeyLines:
    """Line numbers (from 1) of the tables and keys of a TOML text."""

    def __init__(self, text: str) -> None:
        """Scan *text*, which ``tomllib`` has accepted."""
        self._lines: dict[KeyPath, int] = {}
        table: KeyPath = ()
        closing: str | None = None
        depth = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if closing is not None:
                if line.count(closing) % 2 == 1:
                    closing = None
                continue
            if depth > 0:
                depth += _bracket_balance(line)
                continue
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                header = _split_keys(line.lstrip("[").lstrip())
                if header is not None:
                    table = header[0]
                    for end in range(1, len(table) + 1):
                        self._lines.setdefault(table[:end], number)
                continue
            found = _split_keys(line)
            if found is None or not found[1].startswith("="):
                continue
            keys, rest = found
            path = table + keys
            for end in range(len(table) + 1, len(path) + 1):
                self._lines.setdefault(path[:end], number)
            value = rest[1:].strip()
            for quotes in ('"""', "'''"):
                if value.startswith(quotes) and value.count(quotes) == 1:
                    closing = quotes
            if closing is None and value.startswith("["):
                depth = _bracket_balance(value)

    def line(self, path: Sequence[str]) -> int:
        """The line of *path*, or of its longest prefix found; 1 if none."""
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return 1


def _bracket_balance(text: str) -> int:
    """Open minus closed brackets outside strings (for multi-line arrays)."""
    balance = 0
    quote: str | None = None
    skip = False
    for char in text:
        if skip:
            skip = False
        elif quote is not None:
            if char == "\\" and quote == '"':
                skip = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char == "[":
            balance += 1
        elif char == "]":
            balance -= 1
    return balance
