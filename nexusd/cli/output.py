# SPDX-License-Identifier: MIT
"""How nexusctl shows things: tables for people, JSON for scripts, and a
progress bar on a terminal.

Every string that came from nexusd is cleaned of control characters before
it reaches a terminal, so a name can never move the cursor or start a line.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = [
    "ProgressBar",
    "clean",
    "print_json",
    "print_pairs",
    "print_table",
    "when",
]

#: Width of the progress bar's bar, in characters.
BAR_WIDTH = 30


def clean(value: object) -> str:
    """*value* as one printable line: control characters become ``?``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def when(timestamp: object) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    out: TextIO | None = None,
) -> None:
    """Columns as ``qvm-ls`` prints them: upper-case headers, left-aligned,
    two spaces apart, no trailing blanks."""
    out = out or sys.stdout
    cells = [[clean(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        out.write(line.rstrip() + "\n")


def print_pairs(
    pairs: Iterable[tuple[str, object]], out: TextIO | None = None
) -> None:
    """``key  value`` lines, keys aligned."""
    out = out or sys.stdout
    items = [(k, clean(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        out.write(f"{key.ljust(width)}  {value}".rstrip() + "\n")


def print_json(value: Any, out: TextIO | None = None) -> None:
    """*value* as indented JSON with sorted keys, one document."""
    out = out or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


class ProgressBar:
    """A one-line bar on a terminal; silent when *out* is not one."""

    def __init__(self, label: str, out: TextIO | None = None) -> None:
        """Draw nothing until the first update."""
        self._out = out or sys.stderr
        self._label = clean(label)
        self._active = self._out.isatty()
        self._drawn = False

    def update(self, fraction: float, message: str = "") -> None:
        """Redraw at *fraction* (negative: unknown)."""
        if not self._active:
            return
        if fraction < 0:
            bar, pct = "?" * BAR_WIDTH, " ?? %"
        else:
            filled = int(BAR_WIDTH * min(fraction, 1.0))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            pct = f"{fraction * 100:4.0f} %"
        text = f"\r{self._label} [{bar}] {pct} {clean(message)[:40]}"
        self._out.write(text + "\x1b[K")
        self._out.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = False
