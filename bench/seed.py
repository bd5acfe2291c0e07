# SPDX-License-Identifier: MIT
"""Lay out a simulated dom0 folder for one benchmark point.

The folder has what nexusd reads at start: its configuration, a database
seeded with containers, links and their audit rows (as a long-running
nexusd would have written them), the administrator's policy folder with the
real Qubes files and the shipped ``50-nexus.policy``, and the qubes that the
bench's Admin API port serves.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.port import BenchQube, save_qubes
from nexusd.config import load_config
from nexusd.services.spec import ContainerSpec
from nexusd.sim.layout import SimLayout
from nexusd.store.migrations import migrate

__all__ = [
    "CONFIG_NAME",
    "LINK_PORT",
    "QUBES_NAME",
    "Population",
    "copy_policy",
    "guest_name",
    "seed_root",
]

REPO = Path(__file__).resolve().parents[1]
#: The real Qubes policy files, beside the checkout (absent: only ours).
FIXTURES = REPO.parent / "shared" / "fixtures" / "qubes-policy"
SHIPPED_POLICY = REPO / "policy" / "50-nexus.policy"
CONFIG_NAME = "nexusd.toml"
QUBES_NAME = "bench-qubes.json"
#: The port every seeded container offers, and every seeded link uses.
LINK_PORT = 8080
#: The bench's configuration: enough call slots for 128 guests at once
#: (the default, 64 in all, would refuse half of them as busy), and room
#: for 10,000 containers.
CONFIG_TEXT = """\
[limits]
calls_total = 256
containers_total = 100000
"""


@dataclass(frozen=True)
class Population:
    """How many qubes (nexus guests), containers and links to seed."""

    qubes: int
    containers: int
    links: int

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``1000q/10000c/10000l``."""
        return f"{self.qubes}q/{self.containers}c/{self.links}l"


def guest_name(index: int) -> str:
    """The name of guest qube number *index*."""
    return f"guest-{index:04d}"


def container_name(index: int) -> str:
    """The name of seeded container number *index*."""
    return f"c{index}"


def seed_root(root: Path, population: Population) -> SimLayout:
    """Create the folder *root* for *population*; return its layout.

    Container ``i`` lives in guest ``i % qubes``; link ``i`` goes from
    container ``i + 1`` to port 8080 of container ``i``, so every qube has
    the same share of containers and links and every link joins two qubes.
    """
    if (
        population.qubes < 2
        or population.containers < population.qubes
        or population.links > population.containers
    ):
        msg = "need two qubes, a container per qube, a container per link"
        raise ValueError(msg)
    layout = SimLayout(root)
    for folder in (
        layout.runtime_policy_dir,
        layout.legacy_policy_dir,
        layout.nexusd_state_dir,
        layout.nexusd_run_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    copy_policy(layout)
    (root / CONFIG_NAME).write_text(CONFIG_TEXT, encoding="ascii")
    qubes = [
        BenchQube(guest_name(i), str(uuid.UUID(int=i + 1)))
        for i in range(population.qubes)
    ]
    save_qubes(root / QUBES_NAME, qubes)
    config = load_config(root / CONFIG_NAME, sim_root=root)
    _database(config.database, qubes, population)
    return layout


def copy_policy(layout: SimLayout) -> None:
    """The administrator's policy folders: Qubes' files and ours.

    The legacy folder (``!compat-4.0``) stays empty, as on a machine
    installed with Qubes 4.1 or later.
    """
    layout.legacy_policy_dir.mkdir(parents=True, exist_ok=True)
    if FIXTURES.is_dir():
        shutil.copytree(FIXTURES / "policy.d", layout.policy_dir)
        for path in layout.policy_dir.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    else:
        layout.policy_dir.mkdir(parents=True)
    shutil.copy(SHIPPED_POLICY, layout.policy_dir / SHIPPED_POLICY.name)


def _database(
    path: Path, qubes: list[BenchQube], population: Population
) -> None:
    spec = ContainerSpec(ports=(LINK_PORT,))
    canonical, digest = spec.canonical(), spec.sha256()
    now = time.time()
    count = population.containers
    owners = [qubes[i % len(qubes)] for i in range(count)]
    containers = [
        (i + 1, q.name, q.uuid, container_name(i), canonical, digest, now, now)
        for i, q in enumerate(owners)
    ]
    links = [
        (_link_id(i), (i + 1) % count + 1, i % count + 1, LINK_PORT, now)
        for i in range(population.links)
    ]
    audit = [
        (now, q.name, _CREATE, "container_created", q.name, container_name(i))
        for i, q in enumerate(owners)
    ]
    for i in range(population.links):
        actor = owners[(i + 1) % count].name
        audit.append((now, actor, _LINK, "link_created", actor, _link_id(i)))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO containers (id, qube, qube_uuid, name, spec,"
            " spec_sha256, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            containers,
        )
        conn.executemany(
            "INSERT INTO links (id, from_container, to_container, port,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            links,
        )
        conn.executemany(
            "INSERT INTO audit (at, actor, via, action, qube, object, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, '{}')",
            audit,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


_CREATE = "nexus.ContainerCreate"
_LINK = "nexus.LinkRequest"


def _link_id(index: int) -> str:
    return f"lnk-{index:016x}"
