# SPDX-License-Identifier: MIT
"""In-process nexusd for tests: a fake Admin API port and a qrexec caller."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexusd.config import Config, Limits, load_config, replace_limits
from nexusd.daemon import Daemon


@dataclass(frozen=True)
class FakeQubeInfo:
    name: str
    klass: str
    power_state: str
    uuid: str


@dataclass(frozen=True)
class FakeEvent:
    subject: str | None
    name: str
    kwargs: dict[str, str] = field(default_factory=dict)


class FakePort:
    """Just the reads the follower makes, and a queue of events."""

    def __init__(self) -> None:
        self.qubes: dict[str, dict[str, Any]] = {}
        self.queue: asyncio.Queue[FakeEvent] = asyncio.Queue()
        self.service_calls: list[tuple[str, str, bytes]] = []
        self.unreachable: set[str] = set()
        self.emitted = 0
        self.add("dom0", "AdminVM", running=True)

    def add(
        self,
        name: str,
        klass: str = "AppVM",
        *,
        guest: bool = False,
        running: bool = True,
        uuid: str | None = None,
        features: dict[str, str] | None = None,
    ) -> None:
        self.qubes[name] = {
            "klass": klass,
            "state": "Running" if running else "Halted",
            "uuid": uuid or f"uuid-{name}-{len(self.qubes)}",
            "tags": {"nexus-guest"} if guest else set(),
            "features": dict(features or {}),
        }

    async def list_qubes(self) -> dict[str, FakeQubeInfo]:
        return {
            n: FakeQubeInfo(n, q["klass"], q["state"], q["uuid"])
            for n, q in self.qubes.items()
        }

    async def get_tags(self, qube: str) -> frozenset[str]:
        return frozenset(self.qubes[qube]["tags"])

    async def get_feature(self, qube: str, name: str) -> str | None:
        return self.qubes[qube]["features"].get(name)

    async def call_service(
        self, qube: str, service: str, payload: bytes, timeout: float
    ) -> bytes:
        self.service_calls.append((qube, service, payload))
        if qube in self.unreachable:
            raise ConnectionRefusedError(qube)
        return b""

    async def events(self):
        yield FakeEvent(None, "connection-established")
        while True:
            yield await self.queue.get()

    def emit(self, subject: str | None, name: str, **kwargs: str) -> None:
        self.emitted += 1
        self.queue.put_nowait(FakeEvent(subject, name, kwargs))


def sim_config(root: Path, **limits: Any) -> Config:
    config = load_config(None, sim_root=root)
    if limits:
        config = replace_limits(config, **limits)
    return config


async def start_daemon(root: Path, port: FakePort, **limits: Any) -> Daemon:
    daemon = Daemon(sim_config(root, **limits), port=port)
    await daemon.start()
    assert daemon.follower is not None
    await asyncio.wait_for(daemon.follower.reconciled.wait(), 5)
    return daemon


async def settle(daemon: Daemon, port: FakePort) -> None:
    """Wait until the follower applied every event emitted so far (the
    connection-established one included) and agents are idle."""
    assert daemon.follower is not None
    async with asyncio.timeout(10):
        while daemon.follower.applied < port.emitted + 1:
            await asyncio.sleep(0.002)
        if daemon.agents is not None:
            await daemon.agents.idle()


async def raw_call(
    socket_path: Path, data: bytes, *, eof: bool = True
) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(data)
    await writer.drain()
    if eof:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    return reply


async def call(
    daemon: Daemon,
    service: str,
    arg: str = "",
    *,
    source: str = "work",
    target: str = "keyword adminvm",
    payload: bytes | dict[str, Any] = b"",
) -> dict[str, Any]:
    """Call like qrexec-daemon does for a guest: header, payload, EOF."""
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    header = f"{service}+{arg} {source} {target}\0".encode()
    reply = await raw_call(daemon.config.paths.socket, header + payload)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    return json.loads(reply)


def db_rows(daemon: Daemon, table: str) -> list[tuple[Any, ...]]:
    """Rows of *table*, read through a second connection."""
    conn = sqlite3.connect(daemon.config.database)
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


__all__ = [
    "FakePort",
    "Limits",
    "call",
    "db_rows",
    "raw_call",
    "settle",
    "sim_config",
    "start_daemon",
]


def lay_out_policy(root: Path, shared: Path) -> Path:
    """dom0's shipped policy files (less !compat-4.0, whose old files are
    the policy engine's tests' business) plus nexusd's own, under *root*."""
    import shutil

    from nexusd.sim.layout import SimLayout

    layout = SimLayout(root)
    shutil.copytree(
        shared / "fixtures" / "qubes-policy" / "policy.d",
        layout.policy_dir,
        ignore=shutil.ignore_patterns("35-compat.policy"),
    )
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "policy" / "50-nexus.policy", layout.policy_dir)
    return root


def guest_port() -> FakePort:
    """work and db as nexus guests, personal as an ordinary qube."""
    port = FakePort()
    port.add("work", guest=True)
    port.add("db", guest=True)
    port.add("personal")
    return port


async def populate(daemon: Daemon) -> str:
    """web in work, postgres:5432 in db, a link between; the link's id."""
    await call(daemon, "nexus.ContainerCreate", "web", source="work")
    await call(
        daemon,
        "nexus.ContainerCreate",
        "postgres",
        source="db",
        payload={"ports": [5432]},
    )
    reply = await call(
        daemon,
        "nexus.LinkRequest",
        "postgres.5432",
        source="work",
        target="name db",
        payload={"from": "web"},
    )
    return str(reply["result"]["link"]["id"])
