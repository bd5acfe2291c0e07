# SPDX-License-Identifier: MIT
"""SQL for containers and the audit trail; each function runs in a write
or read of :class:`nexusd.store.Store` and takes only parsed values."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from nexusd.errors import Conflict, NotFound, QuotaExceeded
from nexusd.services.spec import ContainerSpec

__all__ = [
    "add_audit",
    "count_all",
    "create_container",
    "list_containers",
    "purge_qube",
    "qube_uuids",
    "remove_container",
    "report_state",
]


#: Records the audit trail keeps; older ones are dropped as new ones come.
AUDIT_MAX_ROWS = 100_000


def _record(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    qube, name, spec_text, state, message, created = row
    record: dict[str, Any] = {"qube": qube, "name": name}
    record.update(ContainerSpec.from_canonical(spec_text).to_dict())
    record.update(state=state, message=message, created_at=created)
    return record


_COLUMNS = "qube, name, spec, state, state_message, created_at"


def add_audit(
    conn: sqlite3.Connection,
    *,
    actor: str,
    via: str,
    action: str,
    qube: str,
    obj: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one change in the audit trail, in the caller's transaction;
    the store logs it as ``change_audited`` once the commit is durable."""
    pending = getattr(conn, "audit_pending", None)
    if pending is not None:
        pending.append(
            {
                "actor": actor,
                "via": via,
                "action": action,
                "qube": qube,
                "object": obj,
            }
        )
    cur = conn.execute(
        "INSERT INTO audit (at, actor, via, action, qube, object, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            time.time(),
            actor,
            via,
            action,
            qube,
            obj,
            json.dumps(detail or {}, sort_keys=True),
        ),
    )
    # A guest that churns links must not grow dom0's disk without bound:
    # the oldest records go once the trail holds AUDIT_MAX_ROWS.
    if cur.lastrowid is not None:
        conn.execute(
            "DELETE FROM audit WHERE id <= ?",
            (cur.lastrowid - AUDIT_MAX_ROWS,),
        )


def create_container(
    conn: sqlite3.Connection,
    *,
    qube: str,
    qube_uuid: str,
    name: str,
    spec: ContainerSpec,
    quota_qube: int,
    quota_total: int,
) -> tuple[dict[str, Any], bool]:
    """Create the container, or return the same one; say which.

    Raises:
        Conflict: the name exists in this qube with another spec.
        QuotaExceeded: the qube or the system is at its limit.
    """
    row = conn.execute(
        "SELECT spec_sha256 FROM containers WHERE qube = ? AND name = ?",
        (qube, name),
    ).fetchone()
    if row is not None:
        if row[0] != spec.sha256():
            msg = f"container {name!r} exists with a different spec"
            raise Conflict(msg)
        return _get(conn, qube, name), False
    (in_qube,) = conn.execute(
        "SELECT COUNT(*) FROM containers WHERE qube = ?", (qube,)
    ).fetchone()
    if in_qube >= quota_qube:
        msg = f"this qube may have at most {quota_qube} containers"
        raise QuotaExceeded(msg)
    if count_all(conn) >= quota_total:
        msg = f"the system may have at most {quota_total} containers"
        raise QuotaExceeded(msg)
    now = time.time()
    conn.execute(
        "INSERT INTO containers (qube, qube_uuid, name, spec, spec_sha256,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (qube, qube_uuid, name, spec.canonical(), spec.sha256(), now, now),
    )
    add_audit(
        conn,
        actor=qube,
        via="nexus.ContainerCreate",
        action="container_created",
        qube=qube,
        obj=name,
        detail=spec.to_dict(),
    )
    return _get(conn, qube, name), True


def count_all(conn: sqlite3.Connection) -> int:
    """Number of containers in all qubes."""
    (total,) = conn.execute("SELECT COUNT(*) FROM containers").fetchone()
    return int(total)


def _get(conn: sqlite3.Connection, qube: str, name: str) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM containers WHERE qube = ? AND name = ?",  # noqa: S608 - constant columns
        (qube, name),
    ).fetchone()
    if row is None:
        msg = f"no container {name!r} in this qube"
        raise NotFound(msg)
    return _record(row)


_PEERS_SQL = (
    "SELECT fc.qube, tc.qube FROM links l"
    " JOIN containers fc ON fc.id = l.from_container"
    " JOIN containers tc ON tc.id = l.to_container"
)
_PEERS_OF_CONTAINER = (
    _PEERS_SQL + " WHERE l.from_container = ?1 OR l.to_container = ?1"
)
_PEERS_OF_QUBE = _PEERS_SQL + " WHERE fc.qube = ?1 OR tc.qube = ?1"


def _peers(conn: sqlite3.Connection, query: str, key: object) -> set[str]:
    return {q for pair in conn.execute(query, (key,)) for q in pair}


def remove_container(
    conn: sqlite3.Connection, *, qube: str, name: str, actor: str, via: str
) -> set[str]:
    """Remove the container and every link that uses it.

    Returns:
        The qubes at either end of the removed links (empty if none).

    Raises:
        NotFound: the qube has no such container.
    """
    row = conn.execute(
        "SELECT id FROM containers WHERE qube = ? AND name = ?", (qube, name)
    ).fetchone()
    if row is None:
        msg = f"no container {name!r} in this qube"
        raise NotFound(msg)
    peers = _peers(conn, _PEERS_OF_CONTAINER, row[0])
    (links,) = conn.execute(
        "SELECT COUNT(*) FROM links WHERE from_container = ?"
        " OR to_container = ?",
        (row[0], row[0]),
    ).fetchone()
    conn.execute("DELETE FROM containers WHERE id = ?", (row[0],))
    add_audit(
        conn,
        actor=actor,
        via=via,
        action="container_removed",
        qube=qube,
        obj=name,
        detail={"links_removed": links},
    )
    return peers


def report_state(
    conn: sqlite3.Connection, *, qube: str, name: str, state: str, message: str
) -> dict[str, Any]:
    """Record the state a guest reports; return the record.

    Raises:
        NotFound: the qube has no such container.
    """
    cur = conn.execute(
        "UPDATE containers SET state = ?, state_message = ?, updated_at = ?"
        " WHERE qube = ? AND name = ?",
        (state, message, time.time(), qube, name),
    )
    if cur.rowcount == 0:
        msg = f"no container {name!r} in this qube"
        raise NotFound(msg)
    return _get(conn, qube, name)


def list_containers(
    conn: sqlite3.Connection, qube: str | None = None
) -> list[dict[str, Any]]:
    """Containers of *qube* (or of all qubes), by qube and name."""
    if qube is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM containers ORDER BY qube, name"  # noqa: S608 - constant columns
        )
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE qube = ?"  # noqa: S608 - constant columns
            " ORDER BY name",
            (qube,),
        )
    return [_record(row) for row in rows]


def qube_uuids(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """Each qube that has containers, with the uuids they were made under."""
    found: dict[str, set[str]] = {}
    for qube, uuid in conn.execute(
        "SELECT DISTINCT qube, qube_uuid FROM containers"
    ):
        found.setdefault(qube, set()).add(uuid)
    return found


def purge_qube(
    conn: sqlite3.Connection, *, qube: str, reason: str
) -> tuple[int, set[str]]:
    """Remove every container of *qube* and every link at either end.

    Returns:
        (containers removed, qubes at either end of removed links).
    """
    peers = _peers(conn, _PEERS_OF_QUBE, qube)
    (links,) = conn.execute(
        "SELECT COUNT(*) FROM links WHERE from_container IN"
        " (SELECT id FROM containers WHERE qube = ?) OR to_container IN"
        " (SELECT id FROM containers WHERE qube = ?)",
        (qube, qube),
    ).fetchone()
    cur = conn.execute("DELETE FROM containers WHERE qube = ?", (qube,))
    if cur.rowcount:
        add_audit(
            conn,
            actor="dom0",
            via="admin.Events",
            action="qube_purged",
            qube=qube,
            obj="*",
            detail={
                "reason": reason,
                "containers": cur.rowcount,
                "links": links,
            },
        )
    return cur.rowcount, peers
