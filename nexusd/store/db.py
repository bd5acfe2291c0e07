# SPDX-License-Identifier: MIT
"""The SQLite connection, its one thread, and group commit for writes.

Every statement runs on one dedicated thread, so the event loop never blocks
on the disk. Writes queued while a commit is under way share the next
commit: each runs in its own savepoint (one failing write does not undo the
others) and every caller is answered only after ``COMMIT`` returned. Reads
that guests repeat (their container list) may be answered from memory until
the next commit, which saves the round trip to the database thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from nexusd.errors import Unavailable
from nexusd.store.migrations import migrate

__all__ = ["Store", "StoreCorrupt"]

log = structlog.get_logger()

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

#: How long a statement waits for a lock held by another process (an admin's
#: sqlite3 shell, say) before failing.
BUSY_TIMEOUT_MS = 5000
#: Longest time a cached read is served. nexusd's own commits drop the cache
#: at once; this bounds how long a change made by another process (an
#: admin's sqlite3 shell) can go unseen.
READ_CACHE_SECONDS = 1.0
#: Most cached reads kept; past it the cache starts over.
READ_CACHE_ENTRIES = 4096


class StoreCorrupt(RuntimeError):
    """The database failed its integrity check; it is kept as it is."""


class Store:
    """nexusd's database: reads and group-committed writes on one thread."""

    def __init__(
        self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, path: Path
    ) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self._executor = executor
        self.path = path
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0
        #: Batches finished so far, committed or not; a cached read is
        #: valid only in the generation it was read in.
        self.generation = 0
        self._cache: dict[Hashable, tuple[int, float, Any]] = {}

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database at *path*, check it, migrate it.

        Raises:
            StoreCorrupt: ``PRAGMA quick_check`` found damage. The file is
                left untouched for the administrator.
        """
        executor = ThreadPoolExecutor(1, thread_name_prefix="nexusd-db")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor, path)

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run *op* on the database thread outside any write transaction."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, op, self._conn)

    async def read_cached(
        self, key: Hashable, op: Callable[[sqlite3.Connection], T]
    ) -> T:
        """Like :meth:`read`, but answered from memory while nothing has
        been committed since *op* last ran under *key* (and for at most
        ``READ_CACHE_SECONDS``).

        The value is shared between callers: treat it as read-only. A caller
        answered after its own write always sees that write, since the
        commit drops the cache before the writer is answered.
        """
        now = time.monotonic()
        entry = self._cache.get(key)
        if (
            entry is not None
            and entry[0] == self.generation
            and now - entry[1] < READ_CACHE_SECONDS
        ):
            value: T = entry[2]
            return value
        generation = self.generation
        value = await self.read(op)
        # Batches run in order on the one thread, so this read saw at least
        # what was committed in *generation*; if a commit ended meanwhile,
        # the value may be older than the state and is not kept.
        if generation == self.generation:
            if len(self._cache) >= READ_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (generation, now, value)
        return value

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run *op* in a transaction; return once its commit is durable.

        Raises:
            Unavailable: the commit failed (disk full, read-only folder).
            Exception: whatever *op* raised; its changes are rolled back and
                the other writes of the same commit are kept.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            ops = [op for op, _ in batch]
            try:
                outcomes, audit = await loop.run_in_executor(
                    self._executor, _run_batch, self._conn, ops
                )
            except sqlite3.Error as err:
                log.error("commit_failed", error=str(err), writes=len(ops))
                failure = Unavailable("nexusd's state database is not writable")
                outcomes = [(False, failure)] * len(ops)
            else:
                self.commits += 1
                for record in audit:
                    log.info("change_audited", **record)
            self.generation += 1
            self._cache.clear()
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def close(self) -> None:
        """Wait for queued writes, then close the connection and thread."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


class AuditingConnection(sqlite3.Connection):
    """A connection that keeps the audit records of its open transaction,
    so that each is also logged once its commit is durable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As :class:`sqlite3.Connection`."""
        super().__init__(*args, **kwargs)
        self.audit_pending: list[dict[str, Any]] = []


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_MS / 1000,
        factory=AuditingConnection,
    )
    try:
        (result,) = conn.execute("PRAGMA quick_check").fetchone()
        if result != "ok":
            msg = (
                f"{path}: integrity check failed ({result}); the file is kept"
                " as it is: restore it from a backup or move it away"
            )
            raise StoreCorrupt(msg)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except sqlite3.DatabaseError as err:
        conn.close()
        msg = (
            f"{path}: not a usable nexusd database ({err}); the file is kept"
            " as it is: restore it from a backup or move it away"
        )
        raise StoreCorrupt(msg) from err
    except BaseException:
        conn.close()
        raise
    return conn


def _run_batch(
    conn: sqlite3.Connection, ops: list[Op]
) -> tuple[list[tuple[bool, Any]], list[dict[str, Any]]]:
    """Run *ops* in one transaction; return their outcomes and the audit
    records that the commit made durable."""
    outcomes: list[tuple[bool, Any]] = []
    audit: list[dict[str, Any]] = getattr(conn, "audit_pending", [])
    audit.clear()
    if len(ops) == 1:
        return _run_one(conn, ops[0], audit)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT op")
            mark = len(audit)
            try:
                value = op(conn)
            except Exception as err:  # noqa: BLE001 - handed to its caller
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                del audit[mark:]
                outcomes.append((False, err))
            else:
                conn.execute("RELEASE op")
                outcomes.append((True, value))
        conn.execute("COMMIT")
    except BaseException:
        audit.clear()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    committed = list(audit)
    audit.clear()
    return outcomes, committed


def _run_one(
    conn: sqlite3.Connection, op: Op, audit: list[dict[str, Any]]
) -> tuple[list[tuple[bool, Any]], list[dict[str, Any]]]:
    """A batch of one write: its transaction is its savepoint, so a failure
    rolls the transaction back instead (two statements fewer per write when
    calls come one at a time)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            value = op(conn)
        except Exception as err:  # noqa: BLE001 - handed to its caller
            conn.execute("ROLLBACK")
            audit.clear()
            return [(False, err)], []
        conn.execute("COMMIT")
    except BaseException:
        audit.clear()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    committed = list(audit)
    audit.clear()
    return [(True, value)], committed
