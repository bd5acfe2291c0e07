# SPDX-License-Identifier: MIT
"""Versioned schema of the database; ``PRAGMA user_version`` is the version.

Migrations only ever append: a released step is never edited, so a database
written by any release upgrades by running the steps after its version.
"""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

MIGRATIONS: tuple[str, ...] = (
    # 1: containers, links, the audit trail.
    """
    CREATE TABLE containers (
        id INTEGER PRIMARY KEY,
        qube TEXT NOT NULL,
        qube_uuid TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_sha256 TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'requested',
        state_message TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (qube, name)
    );
    CREATE TABLE links (
        id TEXT PRIMARY KEY,
        from_container INTEGER NOT NULL
            REFERENCES containers (id) ON DELETE CASCADE,
        to_container INTEGER NOT NULL
            REFERENCES containers (id) ON DELETE CASCADE,
        port INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (from_container, to_container, port)
    );
    CREATE INDEX links_to ON links (to_container);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        via TEXT NOT NULL,
        action TEXT NOT NULL,
        qube TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_qube ON audit (qube, id);
    """,
    # 2: qubes being created, recorded before qubesd creates them
    # (nexusd.nixos.creating).
    """
    CREATE TABLE creating (
        name TEXT PRIMARY KEY,
        klass TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring *conn* to ``SCHEMA_VERSION``; return the version it had.

    Each step runs in its own transaction together with the version bump, so
    a crash leaves the database at a whole version.

    Raises:
        RuntimeError: the database is newer than this nexusd.
    """
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > SCHEMA_VERSION:
        msg = (
            f"database schema version {found} is newer than this nexusd"
            f" ({SCHEMA_VERSION}); refusing to touch it"
        )
        raise RuntimeError(msg)
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return int(found)


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
