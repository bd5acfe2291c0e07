# SPDX-License-Identifier: MIT
"""An in-process feed of changes to containers and links.

Services publish after their commit; subscribers (the D-Bus signals, say)
get each change in order. A failing subscriber is logged and skipped, so it
never fails the call that made the change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = ["Change", "ChangeFeed"]

log = structlog.get_logger()


@dataclass(frozen=True)
class Change:
    """One committed change.

    Attributes:
        kind: ``container`` or ``link``.
        action: ``added``, ``changed`` or ``removed``.
        qube: the qube that owns the object (for a link: its source qube).
        name: container name or link id.
        data: the object's record after the change (before, for removals).
    """

    kind: str
    action: str
    qube: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class ChangeFeed:
    """Fan-out of :class:`Change` to subscribers."""

    def __init__(self) -> None:
        """Start with no subscribers."""
        self._subscribers: list[Callable[[Change], None]] = []

    def subscribe(self, callback: Callable[[Change], None]) -> None:
        """Call *callback* with every change from now on."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[Change], None]) -> None:
        """Stop calling *callback*."""
        self._subscribers.remove(callback)

    def publish(self, change: Change) -> None:
        """Hand *change* to every subscriber."""
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("change_subscriber_failed", kind=change.kind)
