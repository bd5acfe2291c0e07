# SPDX-License-Identifier: MIT
"""What the administrator's methods do, on the event loop, through the same
paths as the qrexec services: the store's writes (with their audit
records), the change feed, and the links' policy file and agent sync.

Arguments arrive from a bus socket, so each is ``untrusted_*`` until a
``parse_*`` returns it. This module imports no GLib.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from typing import Any

import structlog

from nexusd import __version__
from nexusd.changes import Change
from nexusd.dbus import AUDIT_MAX
from nexusd.errors import BadArgument, NotFound, Unavailable
from nexusd.names import parse_container_name, parse_qube_name
from nexusd.store import Store
from nexusd.store import containers as csql
from nexusd.store import links as lsql

__all__ = [
    "AUDIT_DEFAULT",
    "AUDIT_MAX",
    "AdminMethods",
    "parse_audit_limit",
    "parse_link_id",
    "parse_optional_qube",
]

log = structlog.get_logger()

#: Records AuditLog returns when the caller gives no limit.
AUDIT_DEFAULT = 50
#: Link ids as nexusd makes them (``lnk-`` and 16 hex digits).
_LINK_ID_RE = re.compile(r"\Alnk-[0-9a-f]{16}\Z")
_LINK_ID_MAX = 20


def parse_link_id(*, untrusted_id: object) -> str:
    """Return *untrusted_id* as a link id.

    Raises:
        BadArgument: not a string of the form ``lnk-`` + 16 hex digits.
    """
    if (
        not isinstance(untrusted_id, str)
        or len(untrusted_id) != _LINK_ID_MAX
        or _LINK_ID_RE.match(untrusted_id) is None
    ):
        msg = "link id must be lnk- and 16 lower-case hex digits"
        raise BadArgument(msg)
    return untrusted_id


def parse_optional_qube(*, untrusted_qube: object) -> str | None:
    """Return *untrusted_qube* as a qube name, or None for ``""`` (all).

    Raises:
        BadArgument: not a string, or not a valid qube name.
    """
    if not isinstance(untrusted_qube, str):
        msg = "qube must be a string"
        raise BadArgument(msg)
    if untrusted_qube == "":
        return None
    return parse_qube_name(untrusted_name=untrusted_qube)


def parse_audit_limit(*, untrusted_limit: object) -> int:
    """Return the number of records to show: 0 means the default.

    Raises:
        BadArgument: not a whole number from 0 to ``AUDIT_MAX``.
    """
    if (
        isinstance(untrusted_limit, bool)
        or not isinstance(untrusted_limit, int)
        or not 0 <= untrusted_limit <= AUDIT_MAX
    ):
        msg = f"limit must be 0 to {AUDIT_MAX}"
        raise BadArgument(msg)
    return untrusted_limit or AUDIT_DEFAULT


_AUDIT_COLUMNS = "id, at, actor, via, action, qube, object, detail"
#: Records about links are filed under the source qube; these detail keys
#: name the other end, so a qube's log shows links made to it too.
_LINK_ENDS = ("from", "to", "other")


def _audit_record(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, at, actor, via, action, qube, obj, detail = row
    return {
        "id": rid,
        "at": at,
        "actor": actor,
        "via": via,
        "action": action,
        "qube": qube,
        "object": obj,
        "detail": json.loads(detail),
    }


def _involves(record: dict[str, Any], qube: str) -> bool:
    if record["qube"] == qube:
        return True
    detail = record["detail"]
    if not isinstance(detail, dict):
        return False
    return any(
        isinstance(detail.get(key), str)
        and (detail[key] == qube or detail[key].startswith(qube + "/"))
        for key in _LINK_ENDS
    )


def _audit_rows(
    conn: sqlite3.Connection, qube: str | None, limit: int
) -> list[dict[str, Any]]:
    if qube is None:
        rows = conn.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?",  # noqa: S608 - constant columns
            (limit,),
        )
        return [_audit_record(row) for row in rows]
    rows = conn.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE qube = ?"  # noqa: S608 - constant columns
        " OR action LIKE 'link%' ORDER BY id DESC",
        (qube,),
    )
    found: list[dict[str, Any]] = []
    for row in rows:
        record = _audit_record(row)
        if _involves(record, qube):
            found.append(record)
            if len(found) >= limit:
                break
    return found


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    (links,) = conn.execute("SELECT COUNT(*) FROM links").fetchone()
    return csql.count_all(conn), int(links)


def _uses(link: dict[str, Any], qube: str, name: str) -> bool:
    return any(
        link[end]["qube"] == qube and link[end]["container"] == name
        for end in ("from", "to")
    )


class AdminMethods:
    """The administrator's operations on a running :class:`Daemon`."""

    def __init__(self, daemon: Any) -> None:
        """Work through *daemon*'s public parts (store, registry, links)."""
        self._daemon = daemon
        self.started_at = time.time()

    def _store(self) -> Store:
        store = self._daemon.store
        if store is None:
            msg = "nexusd's database is not open"
            raise Unavailable(msg)
        return store  # type: ignore[no-any-return]

    async def status(self, jobs_running: int = 0) -> dict[str, Any]:
        """Version, readiness, counts and paths."""
        daemon = self._daemon
        containers, links = await self._store().read(_counts)
        qubes = list(daemon.registry)
        config = daemon.config
        writer = getattr(daemon.links, "writer", None)
        errors = list(getattr(writer, "last_errors", ()))
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "ready": bool(daemon.registry.ready),
            "qubes": len(qubes),
            "guests": sum(1 for q in qubes if q.guest),
            "containers": containers,
            "links": links,
            "jobs_running": jobs_running,
            "socket": str(config.paths.socket),
            "database": str(config.database),
            "links_policy": str(config.links_policy_file),
            "policy_errors": len(errors),
            "simulated": config.sim_root is not None,
        }

    async def list_qubes(self) -> list[dict[str, Any]]:
        """Every qube nexusd knows of, by name."""
        return [
            {
                "name": q.name,
                "class": q.klass,
                "running": q.running,
                "guest": q.guest,
                "uuid": q.uuid,
                "quota": q.quota,
                "tags": sorted(q.tags),
            }
            for q in sorted(self._daemon.registry, key=lambda q: q.name)
        ]

    async def list_containers(
        self, *, untrusted_qube: object
    ) -> list[dict[str, Any]]:
        """Containers of one qube, or of every qube for ``""``."""
        qube = parse_optional_qube(untrusted_qube=untrusted_qube)

        return await self._store().read(
            lambda conn: csql.list_containers(conn, qube)
        )

    async def list_links(self) -> list[dict[str, Any]]:
        """Every link, each with ``blocked_by`` (None when policy lets it)."""
        links = await self._store().read(lsql.all_links)
        annotated: dict[str, dict[str, Any]] = {}
        linker = self._daemon.links
        if linker is not None:
            for qube in sorted({link["from"]["qube"] for link in links}):
                for link in await linker.links_of(qube):
                    annotated[link["id"]] = link
        return [annotated.get(link["id"], link) for link in links]

    async def remove_container(
        self, actor: str, *, untrusted_qube: object, untrusted_name: object
    ) -> dict[str, Any]:
        """Remove a container and its links, as ``actor`` asked."""
        if not isinstance(untrusted_qube, str) or not isinstance(
            untrusted_name, str
        ):
            msg = "qube and container name must be strings"
            raise BadArgument(msg)
        qube = parse_qube_name(untrusted_name=untrusted_qube)
        name = parse_container_name(untrusted_name=untrusted_name)
        via = "dbus:RemoveContainer"

        def op(conn: sqlite3.Connection) -> tuple[list[Any], set[str]]:
            gone = [
                link
                for link in lsql.links_of_qube(conn, qube)
                if _uses(link, qube, name)
            ]
            try:
                peers = csql.remove_container(
                    conn, qube=qube, name=name, actor=actor, via=via
                )
            except NotFound as err:
                msg = f"no container {name!r} in qube {qube}"
                raise NotFound(msg) from err
            return gone, peers

        gone, peers = await self._store().write(op)
        feed = self._daemon.feed
        feed.publish(Change("container", "removed", qube, name))
        for link in gone:
            feed.publish(
                Change(
                    "link", "removed", link["from"]["qube"], link["id"], link
                )
            )
        await self._links_changed(peers | {qube})
        return {
            "removed": name,
            "qube": qube,
            "links_removed": [link["id"] for link in gone],
        }

    async def remove_link(
        self, actor: str, *, untrusted_id: object
    ) -> dict[str, Any]:
        """Remove one link by id, as ``actor`` asked."""
        link_id = parse_link_id(untrusted_id=untrusted_id)
        via = "dbus:RemoveLink"

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            found = [
                link for link in lsql.all_links(conn) if link["id"] == link_id
            ]
            if not found:
                msg = f"no link {link_id}"
                raise NotFound(msg)
            link = found[0]
            conn.execute("DELETE FROM links WHERE id = ?", (link_id,))
            src, dst = link["from"], link["to"]
            csql.add_audit(
                conn,
                actor=actor,
                via=via,
                action="link_removed",
                qube=src["qube"],
                obj=link_id,
                detail={
                    "from": f"{src['qube']}/{src['container']}",
                    "to": f"{dst['qube']}/{dst['container']}.{dst['port']}",
                },
            )
            return link

        link = await self._store().write(op)
        source = link["from"]["qube"]
        self._daemon.feed.publish(
            Change("link", "removed", source, link_id, link)
        )
        await self._links_changed({source, link["to"]["qube"]})
        return {"removed": link_id}

    async def _links_changed(self, qubes: set[str]) -> None:
        linker = self._daemon.links
        if linker is not None:
            await linker.changed(qubes)

    async def audit_log(
        self, *, untrusted_qube: object, untrusted_limit: object
    ) -> list[dict[str, Any]]:
        """The newest audit records, of one qube or of all."""
        qube = parse_optional_qube(untrusted_qube=untrusted_qube)
        limit = parse_audit_limit(untrusted_limit=untrusted_limit)

        return await self._store().read(
            lambda conn: _audit_rows(conn, qube, limit)
        )

    async def explain_policy(
        self,
        *,
        untrusted_source: object,
        untrusted_target: object,
        untrusted_service: object,
    ) -> dict[str, Any]:
        """Which rule decides a call, and which of nexusd's it shadows."""
        from nexusd.explain import explain, parse_policy_request

        request = parse_policy_request(
            untrusted_source=untrusted_source,
            untrusted_target=untrusted_target,
            untrusted_service_and_arg=untrusted_service,
        )

        config = self._daemon.config
        system = self._daemon.registry.system_info()
        found = await asyncio.to_thread(explain, config, system, request)
        return found.as_dict()

    async def check_policy(self) -> list[dict[str, Any]]:
        """Policy problems that affect nexus services."""
        from nexusd.explain import check
        from nexusd.linkpolicy import LinkLine

        rows = await self._store().read(lsql.all_link_lines)
        lines = [
            LinkLine(container=c, port=p, source=a, target=b)
            for a, b, c, p in rows
        ]
        config = self._daemon.config
        system = self._daemon.registry.system_info()
        problems = await asyncio.to_thread(check, config, system, lines)
        return [p.as_dict() for p in problems]
