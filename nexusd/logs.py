# SPDX-License-Identifier: MIT
"""structlog set-up: journal fields under systemd, JSON lines otherwise,
readable columns on a terminal.

Every value that reaches a log line from a guest has passed a grammar first;
the renderers below escape the rest, so no field can start a new record.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["JournalRenderer", "configure_logging", "journal_field_name"]

_FIELD_RE = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD = 64


def journal_field_name(key: str) -> str:
    """Return *key* as a valid journald field name (``A-Z0-9_``).

    journald drops fields with other characters and those starting with
    ``_`` (trusted fields), so the name is upper-cased, cleaned and, where
    needed, prefixed.
    """
    name = _FIELD_RE.sub("_", key.upper())[:_MAX_FIELD]
    if not name or name[0] in "_0123456789":
        name = ("F" + name)[:_MAX_FIELD]
    return name


_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "error": 3,
    "critical": 2,
    "exception": 3,
}


#: Fields the renderer sets itself, or that ``journal.send`` takes as named
#: parameters: a key of an event that maps to one of them is dropped, so it
#: can neither pose as them nor make the send fail.
_OWN_FIELDS = frozenset(
    {
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "NEXUS_EVENT",
        "MESSAGE_ID",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
    }
)


class JournalRenderer:
    """Send the event to journald as structured fields (systemd-python)."""

    def __init__(self) -> None:
        """Bind to systemd.journal; raises ImportError without it."""
        from systemd import journal

        self._send = journal.send

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> str:
        """Send one record; structlog then prints nothing."""
        message = str(event.pop("event", ""))
        fields = {
            name: str(v)
            for k, v in event.items()
            if (name := journal_field_name(k)) not in _OWN_FIELDS
        }
        self._send(
            message,
            PRIORITY=str(_PRIORITY.get(method, 6)),
            SYSLOG_IDENTIFIER="nexusd",
            NEXUS_EVENT=message,
            **fields,
        )
        raise structlog.DropEvent


def configure_logging(
    *, level: str = "info", journal: bool | None = None
) -> str:
    """Configure structlog once for the process; return the output chosen.

    Args:
        level: lowest level written.
        journal: force the journal on or off; by default it is used when
            systemd started us with the journal as stderr (JOURNAL_STREAM).
    """
    if journal is None:
        journal = "JOURNAL_STREAM" in os.environ
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    chosen = "json"
    renderer: Any = None
    if journal:
        try:
            renderer = JournalRenderer()
            chosen = "journal"
        except ImportError:
            renderer = None
    if renderer is None and sys.stderr.isatty():
        processors.insert(2, structlog.processors.TimeStamper(fmt="iso"))
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        chosen = "console"
    if renderer is None:
        processors.insert(2, structlog.processors.TimeStamper(fmt="iso"))
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(renderer if chosen == "console" else None)
    return chosen


def _route_stdlib(console: Any) -> None:
    """Send the standard library's records (asyncio's, say) through the same
    rendering, so a traceback never breaks the one-record-per-line output.

    Under the journal they go as JSON lines on stderr, which journald keeps
    as the message of one record each.
    """
    renderer = console or structlog.processors.JSONRenderer(sort_keys=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
