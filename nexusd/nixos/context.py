# SPDX-License-Identifier: MIT
"""What every NixOS operation works with: the port, the names, the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from nexusd.config import QubesSettings
from nexusd.qubes.port import AdminPort
from nexusd.store import Store
from nexusd.store.containers import add_audit

__all__ = ["Context"]

log = structlog.get_logger()


@dataclass(frozen=True)
class Context:
    """The Admin API port, nexusd's tag and feature names, the database.

    Attributes:
        port: every Admin API call goes through it.
        settings: the owned and guest tags, the quota feature.
        store: where changes are recorded in the audit trail; ``None``
            records nothing (a dry run, or a tool without the database).
        actor: who asked, as the audit trail names them.
    """

    port: AdminPort
    settings: QubesSettings
    store: Store | None = None
    actor: str = "admin"

    async def record(
        self,
        *,
        via: str,
        action: str,
        qube: str,
        obj: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Add one record to the audit trail, durably."""
        if self.store is None:
            return
        actor = self.actor

        def write(conn: Any) -> None:
            add_audit(
                conn,
                actor=actor,
                via=via,
                action=action,
                qube=qube,
                obj=obj,
                detail=detail,
            )

        await self.store.write(write)
