# SPDX-License-Identifier: MIT
"""What must hold on disk after any crash: the database is whole, every
object has its owner and its audit record, and the links policy file is
exactly what the database implies, with no temporary file left behind.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nexusd.linkpolicy import LinkLine, render_links_policy
from nexusd.policy import check_policy_set
from nexusd.sim.layout import SimLayout
from nexusd.sim.model import Dom0Model
from reliability.model import ContainerKey, LinkKey

__all__ = [
    "Snapshot",
    "check_database",
    "check_policy_complete",
    "check_policy_matches",
    "guest_owners",
    "leftover_files",
    "read_snapshot",
]

#: The name nexusd's policy writer gives its temporary file.
TEMP_NAME = ".45-nexus-links.policy.new"
#: The tag that makes a qube a nexus guest (nexusd's default).
GUEST_TAG = "nexus-guest"


@dataclass(frozen=True)
class Snapshot:
    """The database's objects as read by a second connection."""

    containers: dict[ContainerKey, str]
    links: dict[LinkKey, str]
    integrity: str
    foreign_key_errors: int
    audited_containers: set[ContainerKey]
    audited_links: set[str]

    def link_lines(self) -> list[LinkLine]:
        """The nexus.Connect lines the database implies."""
        return [
            LinkLine(
                container=k.target.name,
                port=k.port,
                source=k.source.qube,
                target=k.target.qube,
            )
            for k in self.links
        ]


def read_snapshot(database: Path) -> Snapshot:
    """Read every container, link and audit record of *database*."""
    conn = sqlite3.connect(database, timeout=30)
    try:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        fk_errors = len(conn.execute("PRAGMA foreign_key_check").fetchall())
        containers = {
            ContainerKey(q, n): uuid
            for q, n, uuid in conn.execute(
                "SELECT qube, name, qube_uuid FROM containers"
            )
        }
        links = {
            LinkKey(ContainerKey(fq, fn), ContainerKey(tq, tn), port): lid
            for lid, fq, fn, tq, tn, port in conn.execute(
                "SELECT l.id, fc.qube, fc.name, tc.qube, tc.name, l.port"
                " FROM links l"
                " JOIN containers fc ON fc.id = l.from_container"
                " JOIN containers tc ON tc.id = l.to_container"
            )
        }
        audited_containers: set[ContainerKey] = set()
        audited_links: set[str] = set()
        for action, qube, obj in conn.execute(
            "SELECT action, qube, object FROM audit"
            " WHERE action IN ('container_created', 'link_created')"
        ):
            if action == "container_created":
                audited_containers.add(ContainerKey(qube, obj))
            else:
                audited_links.add(obj)
    finally:
        conn.close()
    return Snapshot(
        containers,
        links,
        str(integrity),
        fk_errors,
        audited_containers,
        audited_links,
    )


def check_database(snap: Snapshot, owners: dict[str, str]) -> list[str]:
    """Whole database, owned objects, an audit record for each object.

    Args:
        snap: what the database holds.
        owners: uuid of each nexus guest, by name.
    """
    violations: list[str] = []
    if snap.integrity != "ok":
        violations.append(f"integrity_check: {snap.integrity}")
    if snap.foreign_key_errors:
        violations.append(f"{snap.foreign_key_errors} dangling references")
    for key, uuid in sorted(snap.containers.items()):
        if owners.get(key.qube) != uuid:
            violations.append(f"container without its owner qube: {key}")
        if key not in snap.audited_containers:
            violations.append(f"container without its audit record: {key}")
    for key, link_id in sorted(snap.links.items()):
        if link_id not in snap.audited_links:
            violations.append(f"link without its audit record: {key}")
    return violations


def check_policy_complete(root: Path) -> list[str]:
    """The links file, if any, is one whole rendering that qrexec loads.

    Holds at every instant, a crash included: qrexec may read the folder
    at any time.
    """
    layout = SimLayout(root)
    path = layout.runtime_policy_dir / "45-nexus-links.policy"
    if not path.exists():
        return []
    text = path.read_text(encoding="ascii")
    violations = []
    errors = check_policy_set(
        layout.runtime_policy_dir,
        layout.policy_dir,
        layout.legacy_policy_dir,
    )
    ours = [e for e in errors if e.startswith(str(path))]
    if ours:
        violations.append(f"links file does not load: {ours[:3]}")
    lines = _lines_of(text)
    if lines is None or render_links_policy(lines) != text:
        violations.append("links file is not one whole rendering")
    return violations


def _lines_of(text: str) -> list[LinkLine] | None:
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) != 5 or "." not in words[1]:
            return None
        container, _, port = words[1][1:].partition(".")
        if not port.isdigit():
            return None
        found.append(LinkLine(container, int(port), words[2], words[3]))
    return found


def check_policy_matches(root: Path, snap: Snapshot) -> list[str]:
    """The links file equals what the database implies."""
    path = SimLayout(root).runtime_policy_dir / "45-nexus-links.policy"
    want = render_links_policy(snap.link_lines())
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return ["links file missing"]
    if text != want:
        got = set(text.splitlines())
        wanted = set(want.splitlines())
        return [
            "links file differs from the database:"
            f" {len(wanted - got)} lines missing,"
            f" {len(got - wanted)} lines extra"
        ]
    return []


def leftover_files(root: Path) -> list[str]:
    """Temporary files in the runtime policy folder."""
    folder = SimLayout(root).runtime_policy_dir
    return [
        f"temporary file left behind: {p.name}"
        for p in sorted(folder.iterdir())
        if p.name.startswith(".") or p.name == TEMP_NAME
    ]


def guest_owners(root: Path) -> dict[str, str]:
    """uuid of every qube tagged as a nexus guest in the simulated dom0."""
    model = Dom0Model.load(SimLayout(root))
    return {
        q.name: str(q.values.get("uuid"))
        for q in model.qubes()
        if GUEST_TAG in q.tags
    }
