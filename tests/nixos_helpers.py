# SPDX-License-Identifier: MIT
"""A simulated dom0 (``nexus-sim init``'s machine) served in-process, and
the NixOS service on it, for the tests of ``nexusd.nixos``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexusd.config import Config, load_config
from nexusd.nixos.service import NixosService
from nexusd.qubes.socket_port import SocketPort
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from nexusd.sim.model import Dom0Model
from nexusd.sim.qubesd import serve_qubesd
from nexusd.store import Store

#: A small image: a few chunks of the service's 1 MiB, plus a tail.
IMAGE_SIZE = 3 * 1024 * 1024 + 4099


@dataclass
class Dom0:
    """The simulated dom0 and a NixOS service on it."""

    root: Path
    layout: SimLayout
    model: Dom0Model
    config: Config
    store: Store
    service: NixosService
    tmp: Path

    def qube(self, name: str) -> Any:
        """The model's qube (the qubesd side), or None."""
        return self.model.domains.get(name)

    def volume_dir(self, name: str) -> Path:
        """Where the simulated qubesd keeps *name*'s volumes."""
        return self.layout.vm_volume_dir(name)

    def audit_rows(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(action, qube, object, detail) of every audit record."""
        conn = sqlite3.connect(self.config.database)
        try:
            rows = conn.execute(
                "SELECT action, qube, object, detail FROM audit ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
        return [(a, q, o, json.loads(d)) for a, q, o, d in rows]

    def declare(self, text: str) -> Path:
        """Write the declared file where nexusd looks for it."""
        path = self.config.paths.declared_qubes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path


def make_image(tmp: Path, size: int = IMAGE_SIZE) -> tuple[Path, str]:
    """A random raw image of *size* bytes and its sha256."""
    data = os.urandom(size)
    path = tmp / "nixos.img"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def open_dom0(tmp_path: Path) -> AsyncIterator[Dom0]:
    """``nexus-sim init``'s machine, its qubesd served in this loop.

    Each test module wraps it in its own ``dom0`` fixture."""
    root = tmp_path / "dom0"
    model = init_machine(root)
    layout = SimLayout(root)
    server = await serve_qubesd(model, layout.qubesd_socket)
    config = load_config(None, sim_root=root)
    config.paths.state_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.database)
    port = SocketPort(layout.qubesd_socket, sim_root=root)
    service = NixosService(port, config, store, retry_first=0.05)
    try:
        yield Dom0(root, layout, model, config, store, service, tmp_path)
    finally:
        await store.close()
        await server.close()
