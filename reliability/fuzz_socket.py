# SPDX-License-Identifier: MIT
"""Fuzzing a running nexusd through its socket: whole calls, hostile bytes.

Every call must get exactly one JSON line with ``ok`` or a known error
code, and a call that is not answered ``ok`` must leave the database as it
was. The calls come as qrexec would pass them on for a guest (header, NUL,
payload, EOF), built from the parser targets' strategies.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from nexusd import errors
from reliability.dom0 import Dom0, raw_call
from reliability.strategies import edits, mutate, payloads

__all__ = ["CODES", "SocketFuzz", "calls"]


def _codes(cls: type[errors.NexusError]) -> set[str]:
    found = {cls.code}
    for sub in cls.__subclasses__():
        found |= _codes(sub)
    return found


#: Every code nexusd may put on the wire.
CODES = frozenset(_codes(errors.NexusError))

_SERVICES = [
    "nexus.ContainerCreate",
    "nexus.ContainerRemove",
    "nexus.ContainerList",
    "nexus.ContainerReport",
    "nexus.LinkRequest",
    "nexus.LinkRemove",
]


@st.composite
def calls(draw: st.DrawFn) -> bytes:
    """One call's bytes: a header for a guest (or not), NUL, a payload."""
    service = draw(st.sampled_from(_SERVICES))
    arg = draw(
        st.sampled_from(["", "web", "pg", "web.80", "pg.5432", "x" * 70])
        | st.from_regex(r"\A[a-z0-9.-]{0,14}\Z")
    )
    source = draw(st.sampled_from(["work", "db", "personal", "dom0", "ghost"]))
    target = draw(
        st.sampled_from(
            ["keyword adminvm", "name db", "name work", "name dom0"]
        )
    )
    header = f"{service}+{arg} {source} {target}".encode()
    header = mutate(header, draw(edits)) if draw(st.booleans()) else header
    payload = draw(payloads | st.just(b'{"from": "web"}'))
    return header + b"\0" + payload


def _state(database: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(database, timeout=30)
    try:
        return tuple(
            conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 - fixed names
            for table in ("containers", "links", "audit")
        )
    finally:
        conn.close()


class SocketFuzz:
    """A check of one call against the nexusd of *dom0*."""

    def __init__(self, dom0: Dom0) -> None:
        """Fuzz the running nexusd of *dom0*."""
        self.dom0 = dom0
        self.calls = 0

    def check(self, data: bytes) -> None:
        """Send *data* as one call; the reply and the database must hold."""
        self.calls += 1
        before = _state(self.dom0.database)
        reply = raw_call(self.dom0.layout.nexusd_socket, data)
        assert reply.body is not None, (reply.error, reply.raw[:200])
        assert reply.code == "ok" or reply.code in CODES, reply.body
        if not reply.ok:
            assert _state(self.dom0.database) == before, reply.body
