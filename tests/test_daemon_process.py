# SPDX-License-Identifier: MIT
"""nexusd as a process: sd_notify, SIGTERM, SIGKILL, a corrupt database."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from tests.procs import (
    Notifications,
    guest_call,
    start_nexusd,
    start_qubesd,
    stop,
)


@pytest.fixture
def dom0(tmp_path: Path):
    root = tmp_path / "dom0"
    init_machine(root)
    qubesd = start_qubesd(root)
    notify = Notifications(tmp_path / "notify.sock")
    try:
        yield root, notify
    finally:
        notify.close()
        stop(qubesd)


def wait_reconciled(root: Path) -> None:
    """Wait until nexusd has reached qubesd (a guest is served)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = guest_call(root, "nexus.ContainerList+", "work")
        if reply["ok"]:
            return
        time.sleep(0.05)
    raise TimeoutError(reply)


class TestNotify:
    def test_ready_status_watchdog_stopping(self, dom0) -> None:
        """If run under a watchdog, nexusd sends READY=1 with STATUS,
        WATCHDOG=1 pings, and STOPPING=1 on SIGTERM, then exits 0."""
        root, notify = dom0
        proc = start_nexusd(
            root, notify, watchdog_own_pid=True, WATCHDOG_USEC="400000"
        )
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert any(line.startswith("STATUS=") for line in ready.splitlines())

        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")
        status = stop(proc)

        notify.wait_for("STOPPING=1")
        assert status == 0

    def test_watchdog_for_other_pid_is_not_pinged(self, dom0) -> None:
        """If WATCHDOG_PID names another process, nexusd sends no ping."""
        root, notify = dom0
        proc = start_nexusd(
            root, notify, WATCHDOG_USEC="100000", WATCHDOG_PID="1"
        )
        time.sleep(0.3)

        stop(proc)
        notify.wait_for("STOPPING=1")

        assert not any("WATCHDOG=1" in m for m in notify.messages)


class TestDurability:
    def test_change_survives_sigkill(self, dom0) -> None:
        """If nexusd is killed right after a reply, the change is there
        after a restart, and the restarted nexusd keeps serving."""
        root, notify = dom0
        proc = start_nexusd(root, notify)
        wait_reconciled(root)

        reply = guest_call(
            root, "nexus.ContainerCreate+web", "work", {"ports": [80]}
        )
        assert reply["ok"], reply
        stop(proc, signal.SIGKILL)

        again = start_nexusd(root, notify)
        wait_reconciled(root)
        listed = guest_call(root, "nexus.ContainerList+", "work")
        created = guest_call(root, "nexus.ContainerCreate+api", "work")
        assert stop(again) == 0

        assert [c["name"] for c in listed["result"]["containers"]] == ["web"]
        assert created["ok"]

    def test_corrupt_database_stops_start_and_is_kept(self, dom0) -> None:
        """If the database is corrupt, nexusd refuses to start, says why,
        and leaves the file as it was."""
        root, _ = dom0
        database = SimLayout(root).nexusd_state_dir / "nexusd.sqlite3"
        database.parent.mkdir(parents=True, exist_ok=True)
        database.write_bytes(b"SQLite format 3\0" + b"\x13" * 4096)
        before = database.read_bytes()

        proc = subprocess.run(
            [sys.executable, "-m", "nexusd.daemon", "--sim", str(root)],
            capture_output=True,
            timeout=30,
            check=False,
        )

        assert proc.returncode == 1
        assert b"database_corrupt" in proc.stderr
        assert database.read_bytes() == before

    def test_schema_from_future_is_refused(self, dom0) -> None:
        """If the database is newer than this nexusd, start-up stops."""
        root, _ = dom0
        database = SimLayout(root).nexusd_state_dir / "nexusd.sqlite3"
        database.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(database)
        conn.execute("PRAGMA user_version = 999")
        conn.close()

        proc = subprocess.run(
            [sys.executable, "-m", "nexusd.daemon", "--sim", str(root)],
            capture_output=True,
            timeout=30,
            check=False,
        )

        assert proc.returncode == 1
        assert b"newer than this nexusd" in proc.stderr


class TestNotifyPeerGone:
    def test_closed_notify_socket_does_not_stop_nexusd(self, dom0) -> None:
        """If the notify socket goes away after READY, nexusd keeps serving
        and still exits 0 on SIGTERM."""
        root, notify = dom0
        proc = start_nexusd(root, notify)
        notify.sock.close()
        notify.path.unlink()

        wait_reconciled(root)

        assert stop(proc) == 0
