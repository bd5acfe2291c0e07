# SPDX-License-Identifier: MIT
"""An in-memory Admin API port for the benchmarks.

It answers the reads nexusd's follower makes from a table of qubes held in
memory, with no round trip, so the figures are nexusd's own cost; a call to
:meth:`BenchPort.reconnect` makes ``admin.Events`` start over, as after a
lost connection to qubesd.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nexusd.qubes.port import CONNECTION_ESTABLISHED, Event, QubeInfo

__all__ = ["GUEST_TAG", "BenchPort", "BenchQube", "save_qubes"]

#: The tag that makes a qube a nexus guest (nexusd's default setting).
GUEST_TAG = "nexus-guest"


@dataclass(frozen=True)
class BenchQube:
    """One simulated qube."""

    name: str
    uuid: str
    klass: str = "AppVM"
    guest: bool = True
    running: bool = True


class BenchPort:
    """The few Admin API reads nexusd makes, answered from memory."""

    def __init__(self, qubes: list[BenchQube]) -> None:
        """Serve *qubes* (dom0 is always there)."""
        self.qubes = {q.name: q for q in qubes}
        self.qubes.setdefault(
            "dom0",
            BenchQube(
                "dom0",
                "00000000-0000-0000-0000-000000000000",
                klass="AdminVM",
                guest=False,
            ),
        )
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.service_calls = 0

    @classmethod
    def from_file(cls, path: Path) -> BenchPort:
        """Load the qubes that :func:`save_qubes` wrote."""
        rows = json.loads(path.read_text(encoding="utf-8"))
        return cls([BenchQube(**row) for row in rows])

    async def list_qubes(self) -> dict[str, QubeInfo]:
        """Every qube, as ``admin.vm.List`` gives it."""
        return {
            q.name: QubeInfo(
                q.name, q.klass, "Running" if q.running else "Halted", q.uuid
            )
            for q in self.qubes.values()
        }

    async def get_tags(self, qube: str) -> frozenset[str]:
        """The guest tag for guests, nothing for the others."""
        return frozenset({GUEST_TAG}) if self.qubes[qube].guest else frozenset()

    async def get_feature(self, qube: str, name: str) -> str | None:
        """No qube has features set."""
        del qube, name
        return None

    async def call_service(
        self, qube: str, service: str, payload: bytes, timeout: float
    ) -> bytes:
        """Agents accept every sync at once."""
        del qube, service, payload, timeout
        self.service_calls += 1
        return b""

    def reconnect(self) -> None:
        """Make the events stream start over, as after a lost connection."""
        self._queue.put_nowait(Event(None, CONNECTION_ESTABLISHED))

    async def events(self) -> AsyncIterator[Event]:
        """``connection-established``, then whatever :meth:`reconnect`
        queues."""
        yield Event(None, CONNECTION_ESTABLISHED)
        while True:
            yield await self._queue.get()

    async def close(self) -> None:
        """Nothing to release."""


def save_qubes(path: Path, qubes: list[BenchQube]) -> None:
    """Write *qubes* for :meth:`BenchPort.from_file` in another process."""
    rows = [q.__dict__ for q in qubes]
    path.write_text(json.dumps(rows), encoding="utf-8")
