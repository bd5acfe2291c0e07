# SPDX-License-Identifier: MIT
"""Tell guest agents their qube's containers and links (nexus.agent.Sync).

Each change marks the qubes it touches; one worker per qube sends that
qube's whole current view, so repeated changes coalesce and an agent can
apply a sync any number of times. A qube that is off or does not answer
stays marked and is retried when it starts; nothing here blocks a call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from nexusd.guests import GuestRegistry

__all__ = ["SYNC_SERVICE", "AgentSync"]

log = structlog.get_logger()

SYNC_SERVICE = "nexus.agent.Sync"

ViewFn = Callable[[str], Awaitable[dict[str, Any]]]


class AgentSync:
    """Background delivery of each qube's view to its guest agent."""

    def __init__(
        self,
        port: Any,
        registry: GuestRegistry,
        view: ViewFn,
        timeout: float,
    ) -> None:
        """Send *view(qube)* through *port* with *timeout* per call."""
        self._port = port
        self._registry = registry
        self._view = view
        self._timeout = timeout
        self.pending: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.delivered: dict[str, int] = {}

    def mark(self, qubes: Iterable[str]) -> None:
        """Queue a sync for each of *qubes*; start those that run."""
        for qube in qubes:
            self.pending.add(qube)
            self._kick(qube)

    def qube_started(self, qube: str) -> None:
        """Retry a pending sync once its qube runs."""
        if qube in self.pending:
            self._kick(qube)

    def _kick(self, qube: str) -> None:
        state = self._registry.get(qube)
        if state is None or not state.running or not state.guest:
            return
        worker = self._workers.get(qube)
        if worker is None or worker.done():
            self._workers[qube] = asyncio.create_task(self._deliver(qube))

    async def _deliver(self, qube: str) -> None:
        while qube in self.pending:
            self.pending.discard(qube)
            view = await self._view(qube)
            payload = json.dumps(view, sort_keys=True).encode()
            try:
                await self._port.call_service(
                    qube, SYNC_SERVICE, payload, self._timeout
                )
            except asyncio.CancelledError:
                self.pending.add(qube)
                raise
            except Exception as err:  # noqa: BLE001 - any failure: retry later
                self.pending.add(qube)
                log.warning(
                    "agent_sync_failed", qube=qube, error=type(err).__name__
                )
                return
            self.delivered[qube] = self.delivered.get(qube, 0) + 1
            log.info("agent_synced", qube=qube, bytes=len(payload))

    async def idle(self) -> None:
        """Wait until no delivery is under way."""
        while busy := [w for w in self._workers.values() if not w.done()]:
            await asyncio.wait(busy)

    async def close(self) -> None:
        """Stop the workers; what they did not send stays pending."""
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
