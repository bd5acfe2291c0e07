# SPDX-License-Identifier: MIT
"""SQL for links between containers of different qubes."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from nexusd.errors import NotFound, QuotaExceeded
from nexusd.store.containers import add_audit

__all__ = [
    "all_link_lines",
    "all_links",
    "create_link",
    "links_of_qube",
    "remove_link",
]

_LINK_SELECT = """
SELECT l.id, fc.qube, fc.name, tc.qube, tc.name, l.port, l.created_at
FROM links l
JOIN containers fc ON fc.id = l.from_container
JOIN containers tc ON tc.id = l.to_container
"""


def _link(row: tuple[Any, ...]) -> dict[str, Any]:
    link_id, fq, fname, tq, tname, port, created = row
    return {
        "id": link_id,
        "from": {"qube": fq, "container": fname},
        "to": {"qube": tq, "container": tname, "port": port},
        "created_at": created,
    }


def _container(
    conn: sqlite3.Connection, qube: str, name: str
) -> tuple[int, list[int]] | None:
    row = conn.execute(
        "SELECT id, spec FROM containers WHERE qube = ? AND name = ?",
        (qube, name),
    ).fetchone()
    if row is None:
        return None
    return int(row[0]), list(json.loads(row[1])["ports"])


def _count_requested(conn: sqlite3.Connection, qube: str) -> int:
    """Links that *qube* asked for (its containers are their source)."""
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM links l"
        " JOIN containers fc ON fc.id = l.from_container"
        " WHERE fc.qube = ?",
        (qube,),
    ).fetchone()
    return int(count)


def create_link(
    conn: sqlite3.Connection,
    *,
    from_qube: str,
    from_container: str,
    to_qube: str,
    to_container: str,
    port: int,
    limit: int,
) -> tuple[dict[str, Any], bool]:
    """Record the link, or return the same one; say whether it is new.

    Raises:
        NotFound: the caller has no such container, or the other qube has no
            such container or it does not offer *port*. The message does not
            say which part of the other qube was missing.
        QuotaExceeded: the requesting qube is at its link limit.
    """
    source = _container(conn, from_qube, from_container)
    if source is None:
        msg = f"no container {from_container!r} in this qube"
        raise NotFound(msg)
    dest = _container(conn, to_qube, to_container)
    if dest is None or port not in dest[1]:
        msg = f"{to_qube} offers no container port {to_container}.{port}"
        raise NotFound(msg)
    row = conn.execute(
        _LINK_SELECT + " WHERE l.from_container = ? AND l.to_container = ?"
        " AND l.port = ?",
        (source[0], dest[0], port),
    ).fetchone()
    if row is not None:
        return _link(row), False
    # Only the requester's own links count: a limit on links into the
    # target would let one guest use up another's budget.
    if _count_requested(conn, from_qube) >= limit:
        msg = f"this qube may request at most {limit} links"
        raise QuotaExceeded(msg)
    link_id = "lnk-" + secrets.token_hex(8)
    conn.execute(
        "INSERT INTO links (id, from_container, to_container, port,"
        " created_at) VALUES (?, ?, ?, ?, ?)",
        (link_id, source[0], dest[0], port, time.time()),
    )
    add_audit(
        conn,
        actor=from_qube,
        via="nexus.LinkRequest",
        action="link_created",
        qube=from_qube,
        obj=link_id,
        detail={
            "from": f"{from_qube}/{from_container}",
            "to": f"{to_qube}/{to_container}.{port}",
        },
    )
    row = conn.execute(_LINK_SELECT + " WHERE l.id = ?", (link_id,)).fetchone()
    return _link(row), True


def remove_link(
    conn: sqlite3.Connection,
    *,
    caller: str,
    other: str,
    from_container: str,
    to_container: str,
    port: int,
) -> dict[str, Any]:
    """Remove the link between *caller* and *other*, from either end.

    The link from the caller's container to the other qube's is tried
    first, then the one from the other qube's container to the caller's.

    Raises:
        NotFound: no such link has the caller at either end.
    """
    for fq, tq in ((caller, other), (other, caller)):
        row = conn.execute(
            _LINK_SELECT + " WHERE fc.qube = ? AND fc.name = ? AND tc.qube = ?"
            " AND tc.name = ? AND l.port = ?",
            (fq, from_container, tq, to_container, port),
        ).fetchone()
        if row is not None:
            conn.execute("DELETE FROM links WHERE id = ?", (row[0],))
            add_audit(
                conn,
                actor=caller,
                via="nexus.LinkRemove",
                action="link_removed",
                qube=caller,
                obj=row[0],
                detail={"other": other},
            )
            return _link(row)
    msg = "no such link between this qube and the target"
    raise NotFound(msg)


def links_of_qube(conn: sqlite3.Connection, qube: str) -> list[dict[str, Any]]:
    """Links with *qube* at either end, by id."""
    rows = conn.execute(
        _LINK_SELECT + " WHERE fc.qube = ? OR tc.qube = ? ORDER BY l.id",
        (qube, qube),
    )
    return [_link(row) for row in rows]


def all_links(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every link, by id."""
    return [_link(row) for row in conn.execute(_LINK_SELECT + " ORDER BY l.id")]


def all_link_lines(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    """(source qube, target qube, target container, port) of every link,
    deduplicated and sorted: what the data-plane policy must allow."""
    rows = conn.execute(
        "SELECT DISTINCT fc.qube, tc.qube, tc.name, l.port FROM links l"
        " JOIN containers fc ON fc.id = l.from_container"
        " JOIN containers tc ON tc.id = l.to_container"
        " ORDER BY tc.name, l.port, fc.qube, tc.qube"
    )
    return [(str(a), str(b), str(c), int(d)) for a, b, c, d in rows]
