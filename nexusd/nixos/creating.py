# SPDX-License-Identifier: MIT
"""Qubes nexusd is about to create, recorded before qubesd creates them.

Creating a qube and marking it as nexusd's are two Admin API calls, and no
call creates a qube with a tag. A crash between them would leave a qube
that carries no mark of nexusd's and that nothing could tell from an
administrator's. So the name is written to the database, durably, before
the create call, and dropped once the qube carries nexusd's tag or is
known to be gone; the sweep after a restart removes a qube that is still
recorded and still untagged.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

import structlog

from nexusd.errors import NexusError
from nexusd.nixos.cleanup import discard_created
from nexusd.nixos.context import Context
from nexusd.qubes.errors import NoSuchQube

__all__ = ["begin", "end", "sweep_unmarked"]

log = structlog.get_logger()


async def begin(ctx: Context, name: str, klass: str) -> None:
    """Record, durably, that a qube *name* of qubesd class *klass* is
    about to be created (nothing is recorded without a database).

    Raises:
        Unavailable: the database cannot be written; create nothing then.
    """
    if ctx.store is None:
        return

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO creating (name, klass, started_at)"
            " VALUES (?, ?, ?)",
            (name, klass, time.time()),
        )

    await ctx.store.write(write)


async def end(ctx: Context, name: str) -> None:
    """Drop the record of *name*: it carries nexusd's tag, or is gone, or
    was never created. If the database cannot be written the record stays,
    and the next sweep drops it."""
    if ctx.store is None:
        return

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM creating WHERE name = ?", (name,))

    with contextlib.suppress(NexusError):
        await ctx.store.write(write)


async def sweep_unmarked(ctx: Context) -> list[str]:
    """Remove each recorded qube that exists with its class and without
    nexusd's tag; drop every record settled; return the names removed.

    Raises:
        DaemonUnavailable: qubesd cannot be reached (records stay).
    """
    if ctx.store is None:
        return []
    rows = await ctx.store.read(
        lambda c: c.execute(
            "SELECT name, klass FROM creating ORDER BY name"
        ).fetchall()
    )
    if not rows:
        return []
    qubes = await ctx.port.list_qubes()
    removed = []
    for name, klass in rows:
        info = qubes.get(name)
        if info is not None and info.klass == klass:
            try:
                tags = await ctx.port.get_tags(name)
            except NoSuchQube:
                tags = frozenset({ctx.settings.owned_tag})
            if ctx.settings.owned_tag not in tags:
                # XXX: same name by hand; removed; accepted because rare.
                # A qube an administrator creates under this very name after
                # a crash and before nexusd's restart is taken for nexusd's;
                # the administrator had asked nexusd for that very name, and
                # systemd restarts nexusd within seconds.
                log.warning("unmarked_qube_found", qube=name, klass=klass)
                if not await discard_created(ctx, name):
                    continue
                removed.append(name)
        await end(ctx, name)
    return removed
