# SPDX-License-Identifier: MIT
"""nexusd's D-Bus interface on a real private dbus-daemon: every method,
the signals a subscriber receives, and jobs that run while calls go on."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexusd.cli.client import ClientError, NexusClient
from nexusd.dbus import BUS_NAME, INTERFACE, OBJECT_PATH, introspection_xml
from nexusd.dbus.private_bus import PrivateBus
from nexusd.errors import OperationError
from nexusd.sim.layout import SimLayout
from tests.harness import (
    FakePort,
    call,
    db_rows,
    guest_port,
    lay_out_policy,
    populate,
    settle,
    start_daemon,
)

LINKS_FILE = "45-nexus-links.policy"


class SignalRecorder:
    """Subscribes to nexusd's signals on its own connection and thread."""

    def __init__(self, address: str) -> None:
        from gi.repository import Gio, GLib

        self.seen: list[tuple[str, tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._ready = threading.Event()
        self._address = address
        self._gio = Gio
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        Gio = self._gio
        self._context.push_thread_default()
        con = Gio.DBusConnection.new_for_address_sync(
            self._address,
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
            None,
            None,
        )
        con.signal_subscribe(
            BUS_NAME,
            INTERFACE,
            None,
            OBJECT_PATH,
            None,
            Gio.DBusSignalFlags.NONE,
            self._on_signal,
        )
        # A round trip after AddMatch: the bus handles both in order, so the
        # match is in place once this returns.
        con.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetId",
            None,
            None,
            Gio.DBusCallFlags.NONE,
            5000,
            None,
        )
        self._ready.set()
        self._loop.run()
        con.close_sync(None)
        self._context.pop_thread_default()

    def _on_signal(self, *args: Any) -> None:
        with self._cond:
            self.seen.append((args[4], tuple(args[5].unpack())))
            self._cond.notify_all()

    def wait_for(
        self,
        name: str,
        match: Callable[[tuple[Any, ...]], bool] = lambda _: True,
        timeout: float = 10,
    ) -> tuple[Any, ...]:
        with self._cond:
            found = self._cond.wait_for(
                lambda: self._find(name, match) is not None, timeout
            )
            assert found, f"no {name} signal; saw {[n for n, _ in self.seen]}"
            return self._find(name, match)  # type: ignore[return-value]

    def _find(self, name, match):
        for seen_name, values in self.seen:
            if seen_name == name and match(values):
                return values
        return None

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.seen]

    def close(self) -> None:
        self._context.invoke_full(0, lambda *_: self._loop.quit())
        self._thread.join(10)


@pytest.fixture(scope="module")
def bus():
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    with PrivateBus() as private:
        yield private


@pytest.fixture
def port() -> FakePort:
    return guest_port()


@pytest.fixture
def root(tmp_path: Path, shared_dir: Path) -> Path:
    return lay_out_policy(tmp_path, shared_dir)


@pytest.fixture
async def daemon(bus, root, port, monkeypatch):
    monkeypatch.setenv("NEXUS_DBUS_ADDRESS", bus.address)
    daemon = await start_daemon(root, port)
    yield daemon
    await daemon.stop()


@pytest.fixture
def client(bus) -> NexusClient:
    return NexusClient(bus.address)


@pytest.fixture
def signals(bus):
    recorder = SignalRecorder(bus.address)
    yield recorder
    recorder.close()


async def over_bus(fn, *args, **kwargs):
    """Run a blocking client call off the loop that serves it."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def policy_lines(root: Path) -> list[str]:
    path = SimLayout(root).runtime_policy_dir / LINKS_FILE
    return [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


class TestIntrospection:
    async def test_interface_is_introspectable(self, daemon, client) -> None:
        """If a client introspects the object, it gets the shipped
        interface with every method and signal."""
        xml = await over_bus(_introspect, client)

        from gi.repository import Gio

        found = Gio.DBusNodeInfo.new_for_xml(xml).lookup_interface(INTERFACE)
        shipped = Gio.DBusNodeInfo.new_for_xml(
            introspection_xml()
        ).lookup_interface(INTERFACE)
        assert found is not None
        assert [m.name for m in found.methods] == [
            m.name for m in shipped.methods
        ]
        assert [s.name for s in found.signals] == [
            s.name for s in shipped.signals
        ]


def _introspect(client: NexusClient) -> str:
    from gi.repository import Gio

    reply = client._con().call_sync(
        BUS_NAME,
        OBJECT_PATH,
        "org.freedesktop.DBus.Introspectable",
        "Introspect",
        None,
        None,
        Gio.DBusCallFlags.NONE,
        5000,
        None,
    )
    return reply.unpack()[0]


class TestFork:
    async def test_child_forked_without_exec_stops(self, daemon) -> None:
        """If the process forks while the bus loop runs, the child exits at
        once with status 70 instead of running on with GLib's state."""
        pid = os.fork()
        if pid == 0:
            os._exit(0)

        _, status = os.waitpid(pid, 0)

        assert os.waitstatus_to_exitcode(status) == 70


class TestReads:
    async def test_status_counts(self, daemon, client) -> None:
        """If two containers and a link exist, Status counts them."""
        await populate(daemon)

        status = await over_bus(client.status)

        assert status["ready"] is True
        assert (status["qubes"], status["guests"]) == (4, 2)
        assert (status["containers"], status["links"]) == (2, 1)
        assert status["links_policy"] == str(daemon.config.links_policy_file)

    async def test_list_qubes(self, daemon, client) -> None:
        """If qubes exist, ListQubes has each with its guest flag."""
        found = await over_bus(client.qubes)

        assert [(q["name"], q["guest"]) for q in found] == [
            ("db", True),
            ("dom0", False),
            ("personal", False),
            ("work", True),
        ]

    async def test_list_containers_all_and_by_qube(
        self, daemon, client
    ) -> None:
        """If a qube is named, only its containers are listed."""
        await populate(daemon)

        every = await over_bus(client.containers)
        in_db = await over_bus(client.containers, "db")

        assert [(c["qube"], c["name"]) for c in every] == [
            ("db", "postgres"),
            ("work", "web"),
        ]
        assert [(c["name"], c["ports"]) for c in in_db] == [
            ("postgres", [5432])
        ]

    async def test_list_containers_bad_qube(self, daemon, client) -> None:
        """If the qube name breaks the grammar, the call is refused."""
        with pytest.raises(ClientError) as caught:
            await over_bus(client.containers, "bad name")

        assert caught.value.code == "bad_argument"

    async def test_list_links_with_policy_state(self, daemon, client) -> None:
        """If a link exists, ListLinks has its ends and no blocker."""
        link_id = await populate(daemon)

        found = await over_bus(client.links)

        assert [(x["id"], x["from"], x["to"]) for x in found] == [
            (
                link_id,
                {"qube": "work", "container": "web"},
                {"qube": "db", "container": "postgres", "port": 5432},
            )
        ]
        assert "blocked_by" not in found[0]

    async def test_audit_log_filtered_and_limited(self, daemon, client) -> None:
        """If a qube filter and a limit are given, only records about that
        qube come (links made to it included), newest first."""
        await populate(daemon)

        db = await over_bus(client.audit_log, "db", 0)
        newest = await over_bus(client.audit_log, "", 1)

        assert [(r["actor"], r["action"]) for r in db] == [
            ("work", "link_created"),
            ("db", "container_created"),
        ]
        assert [r["action"] for r in newest] == ["link_created"]

    async def test_audit_limit_over_cap_refused(self, daemon, client) -> None:
        """If the limit is above the cap, the call is refused."""
        with pytest.raises(ClientError) as caught:
            await over_bus(client.audit_log, "", 100_000)

        assert caught.value.code == "bad_argument"

    async def test_explain_over_bus(self, daemon, client) -> None:
        """If a linked call is explained, nexusd's own line decides it."""
        await populate(daemon)

        found = await over_bus(
            client.explain, "work", "db", "nexus.Connect+postgres.5432"
        )

        assert found["decision"]["action"] == "allow"
        assert found["decision"]["file"] == str(daemon.config.links_policy_file)
        assert found["by_nexusd"] is True

    async def test_check_over_bus_finds_blocked_link(
        self, daemon, client, root
    ) -> None:
        """If an admin rule denies a link, CheckPolicy reports it blocked."""
        await populate(daemon)
        admin = SimLayout(root).policy_dir / "30-user.policy"
        admin.write_text("nexus.Connect * work db deny\n")

        found = await over_bus(client.check)

        assert [(p["kind"], p["file"], p["line"]) for p in found] == [
            ("blocked", str(admin), 1)
        ]


class TestRemoveContainer:
    async def test_removes_container_links_and_line(
        self, daemon, client, root, port
    ) -> None:
        """If root removes a linked container, the container, its link and
        its policy line go, and the audit names the D-Bus caller."""
        link_id = await populate(daemon)

        done = await over_bus(client.remove_container, "db", "postgres")
        await settle(daemon, port)

        assert done == {
            "removed": "postgres",
            "qube": "db",
            "links_removed": [link_id],
        }
        assert [r[3] for r in db_rows(daemon, "containers")] == ["web"]
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []
        audit = db_rows(daemon, "audit")[-1]
        assert audit[3:7] == (
            "dbus:RemoveContainer",
            "container_removed",
            "db",
            "postgres",
        )
        assert audit[2].startswith("uid:0/:")

    async def test_unknown_container_changes_nothing(
        self, daemon, client
    ) -> None:
        """If the container does not exist, the call fails not_found and
        nothing is stored."""
        await populate(daemon)
        before = db_rows(daemon, "audit")

        with pytest.raises(ClientError) as caught:
            await over_bus(client.remove_container, "db", "nope")

        assert caught.value.code == "not_found"
        assert db_rows(daemon, "audit") == before
        assert len(db_rows(daemon, "containers")) == 2

    @pytest.mark.parametrize(
        ("qube", "name"),
        [
            ("", "web"),
            ("work", ""),
            ("work", "Web"),
            ("work;", "web"),
            ("work", "a" * 12),
            ("work", "web\n"),
        ],
    )
    async def test_hostile_names_refused(
        self, daemon, client, qube, name
    ) -> None:
        """If a name breaks its grammar, the call is refused and nothing is
        stored."""
        await populate(daemon)
        before = db_rows(daemon, "audit")

        with pytest.raises(ClientError) as caught:
            await over_bus(client.remove_container, qube, name)

        assert caught.value.code == "bad_argument"
        assert db_rows(daemon, "audit") == before


class TestRemoveLink:
    async def test_removes_link_and_line(self, daemon, client, root) -> None:
        """If root removes a link, it and its policy line go, and the audit
        says so."""
        link_id = await populate(daemon)

        done = await over_bus(client.remove_link, link_id)

        assert done == {"removed": link_id}
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []
        audit = db_rows(daemon, "audit")[-1]
        assert audit[3:7] == (
            "dbus:RemoveLink",
            "link_removed",
            "work",
            link_id,
        )

    @pytest.mark.parametrize(
        "link_id",
        [
            "",
            "lnk-",
            "lnk-XYZ0000000000000",
            "lnk-00000000000000000",
            "x" * 4096,
        ],
    )
    async def test_hostile_id_refused(self, daemon, client, link_id) -> None:
        """If the id breaks the grammar, the call is refused and the link
        stays."""
        await populate(daemon)

        with pytest.raises(ClientError) as caught:
            await over_bus(client.remove_link, link_id)

        assert caught.value.code == "bad_argument"
        assert len(db_rows(daemon, "links")) == 1

    async def test_unknown_id_not_found(self, daemon, client) -> None:
        """If no link has the id, the call fails not_found."""
        await populate(daemon)

        with pytest.raises(ClientError) as caught:
            await over_bus(client.remove_link, "lnk-0000000000000000")

        assert caught.value.code == "not_found"
        assert len(db_rows(daemon, "links")) == 1


class TestSignals:
    async def test_guest_changes_reach_subscriber(
        self, daemon, signals
    ) -> None:
        """If guests create containers and a link over qrexec, a subscriber
        gets ContainerAdded and LinkAdded with the records."""
        link_id = await populate(daemon)

        added = await over_bus(
            signals.wait_for, "ContainerAdded", lambda v: v[1] == "postgres"
        )
        link = await over_bus(signals.wait_for, "LinkAdded")

        assert added[0] == "db"
        assert added[2]["ports"] == [5432]
        assert link[0] == link_id
        assert link[1]["to"]["container"] == "postgres"

    async def test_report_is_a_change(self, daemon, signals) -> None:
        """If a guest reports a container's state, ContainerChanged says
        the new state."""
        await populate(daemon)

        await call(
            daemon,
            "nexus.ContainerReport",
            "web",
            source="work",
            payload={"state": "running"},
        )
        changed = await over_bus(signals.wait_for, "ContainerChanged")

        assert changed[:2] == ("work", "web")
        assert changed[2]["state"] == "running"

    async def test_removal_signals_container_and_link(
        self, daemon, client, signals
    ) -> None:
        """If a linked container is removed over D-Bus, ContainerRemoved
        and LinkRemoved follow."""
        link_id = await populate(daemon)

        await over_bus(client.remove_container, "db", "postgres")
        removed = await over_bus(signals.wait_for, "ContainerRemoved")
        link = await over_bus(signals.wait_for, "LinkRemoved")

        assert removed == ("db", "postgres")
        assert link[0] == link_id


class TestJobs:
    async def test_status_answers_during_long_job(
        self, daemon, client, signals
    ) -> None:
        """If a 30-second job runs, Status still answers within a 1 s reply
        deadline, and cancelling the job ends it as cancelled."""
        started = asyncio.Event()

        async def slow(ctx) -> dict[str, Any]:
            for step in range(300):
                ctx.progress(step / 300, f"step {step}")
                started.set()
                await asyncio.sleep(0.1)
            return {"steps": 300}

        daemon.operations = {"Apply": slow}
        job = await over_bus(client.call, "Apply", "(a{sv})", ({},))
        await asyncio.wait_for(started.wait(), 10)
        progress = await over_bus(
            signals.wait_for, "JobProgress", lambda v: v[0] == job
        )

        status = await over_bus(client.call, "Status", timeout_ms=1000)
        await over_bus(client.cancel_job, job)
        end = await over_bus(
            signals.wait_for, "JobFinished", lambda v: v[0] == job
        )

        assert progress[2] == "step 0"
        assert status["jobs_running"] == 1
        assert end[1] == "cancelled"
        assert daemon.dbus.jobs.get(job).state == "cancelled"

    async def test_missing_operation_not_available(
        self, daemon, client
    ) -> None:
        """If this nexusd has no such operation, the call says so."""
        daemon.operations = {}

        with pytest.raises(ClientError) as caught:
            await over_bus(client.call, "Diff", "(a{sv})", ({},))

        assert caught.value.code == "unavailable"
        assert "not available" in caught.value.message

    async def test_job_result_and_options_reach_client(
        self, daemon, client
    ) -> None:
        """If a job finishes, run_job returns its result; the operation got
        the options and the caller as actor."""
        seen: dict[str, Any] = {}

        async def create(ctx) -> dict[str, Any]:
            seen.update(ctx.untrusted_options, actor=ctx.actor, via=ctx.via)
            ctx.progress(1.0, "done")
            return {"qube": ctx.untrusted_options["name"]}

        daemon.operations = {"CreateQube": create}
        end = await over_bus(
            client.run_job, "CreateQube", {"name": "n1", "label": "red"}
        )

        assert (end.state, end.result) == ("done", {"qube": "n1"})
        assert seen["label"] == "red"
        assert seen["via"] == "dbus:CreateQube"
        assert seen["actor"].startswith("uid:0/:")

    async def test_failed_job_carries_code(self, daemon, client) -> None:
        """If an operation raises a nexusd error, the job fails with its
        code and message."""

        async def broken(ctx) -> dict[str, Any]:
            raise OperationError("qubesd went away")

        daemon.operations = {"Apply": broken}
        end = await over_bus(client.run_job, "Apply", {})

        assert (end.state, end.error_code, end.error_message) == (
            "failed",
            "operation_failed",
            "qubesd went away",
        )

    async def test_import_reads_callers_descriptor(
        self, daemon, client, tmp_path
    ) -> None:
        """If a template image is imported, the operation reads it from the
        descriptor the caller passed."""
        image = tmp_path / "nixos.img"
        image.write_bytes(b"\x00root image\xff" * 100)
        read: list[bytes] = []

        async def importer(ctx) -> dict[str, Any]:
            read.append(ctx.image.read())
            return {"size": len(read[0])}

        daemon.operations = {"ImportTemplate": importer}
        with image.open("rb") as f:
            end = await over_bus(
                client.run_job, "ImportTemplate", {"name": "t"}, fd=f.fileno()
            )

        assert end.result == {"size": 1200}
        assert read == [image.read_bytes()]

    async def test_import_without_descriptor_refused(
        self, daemon, client
    ) -> None:
        """If no descriptor comes with ImportTemplate, it is refused."""
        daemon.operations = {"ImportTemplate": None}

        with pytest.raises(ClientError) as caught:
            await over_bus(client.call, "ImportTemplate", "(a{sv}h)", ({}, 0))

        assert caught.value.code == "bad_argument"

    @pytest.mark.parametrize(
        "options",
        [
            {"": "x"},
            {"a b": "x"},
            {"k" * 65: "x"},
            {f"k{i}": i for i in range(33)},
        ],
    )
    async def test_hostile_options_refused(
        self, daemon, client, options
    ) -> None:
        """If the options break their limits, no job starts."""
        from nexusd.dbus.variants import record

        daemon.operations = {"Apply": None}

        with pytest.raises(ClientError) as caught:
            await over_bus(client.call, "Apply", "(a{sv})", (record(options),))

        assert caught.value.code == "bad_argument"
        assert daemon.dbus.jobs.list() == []
