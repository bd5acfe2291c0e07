# SPDX-License-Identifier: MIT
"""The store: migrations, group commit, savepoints, the audit log lines."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nexusd.errors import Conflict
from nexusd.services.spec import ContainerSpec
from nexusd.store import Store
from nexusd.store import containers as sql
from nexusd.store.migrations import SCHEMA_VERSION


def create(name: str, qube: str = "work"):
    return lambda conn: sql.create_container(
        conn,
        qube=qube,
        qube_uuid="u",
        name=name,
        spec=ContainerSpec(),
        quota_qube=100,
        quota_total=100,
    )


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "db" / "nexusd.sqlite3")
    yield store
    await store.close()


class TestStore:
    async def test_new_database_has_current_schema_and_wal(
        self, store, tmp_path
    ) -> None:
        """If the file is new, it gets the current schema in WAL mode."""
        conn = sqlite3.connect(tmp_path / "db" / "nexusd.sqlite3")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        conn.close()

        assert version == SCHEMA_VERSION
        assert mode == "wal"

    async def test_concurrent_writes_share_commits(self, store) -> None:
        """If 50 writes are queued together, fewer commits carry them all."""
        before = store.commits

        await asyncio.gather(*(store.write(create(f"c{i}")) for i in range(50)))

        assert store.commits - before < 50
        assert await store.read(sql.count_all) == 50

    async def test_failing_write_keeps_the_others(self, store) -> None:
        """If one write of a shared commit fails, only it is undone."""
        await store.write(create("web"))

        def bad(conn):
            create("extra")(conn)
            raise Conflict("refused")

        results = await asyncio.gather(
            store.write(create("a")),
            store.write(bad),
            store.write(create("b")),
            return_exceptions=True,
        )

        assert isinstance(results[1], Conflict)
        names = [c["name"] for c in await store.read(sql.list_containers)]
        assert names == ["a", "b", "web"]

    async def test_audit_is_logged_after_commit_only_for_kept_writes(
        self, store
    ) -> None:
        """If a write fails, its audit record is neither stored nor logged;
        the kept write's record is logged once."""

        def bad(conn):
            create("extra")(conn)
            raise Conflict("refused")

        with capture_logs() as logs:
            await asyncio.gather(
                store.write(create("a")),
                store.write(bad),
                return_exceptions=True,
            )

        audited = [e for e in logs if e["event"] == "change_audited"]
        assert [(e["action"], e["object"]) for e in audited] == [
            ("container_created", "a")
        ]
        rows = await store.read(
            lambda c: c.execute("SELECT object FROM audit").fetchall()
        )
        assert rows == [("a",)]

    async def test_audit_trail_keeps_only_the_newest_rows(
        self, store, monkeypatch
    ) -> None:
        """If more records come than the trail keeps, the oldest go."""
        monkeypatch.setattr(sql, "AUDIT_MAX_ROWS", 3)

        for i in range(5):
            await store.write(create(f"c{i}"))

        rows = await store.read(
            lambda c: c.execute(
                "SELECT object FROM audit ORDER BY id"
            ).fetchall()
        )
        assert rows == [("c2",), ("c3",), ("c4",)]
