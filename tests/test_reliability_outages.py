# SPDX-License-Identifier: MIT
"""Outages under a running nexusd: qubesd away and back, the policy folder
changing under it, the state or policy folder full, the state folder turned
read-only. nexusd serves what it can, answers the rest with ``unavailable``,
loses nothing, and recovers by itself."""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexusd import linkpolicy
from nexusd.linkpolicy import LinkLine, LinkPolicyWriter
from nexusd.qubes.errors import DaemonUnavailable, NoSuchQube
from nexusd.sim.client import parse_reply, qubesd_call
from nexusd.sim.model import Dom0Model
from reliability.dom0 import Dom0
from reliability.invariants import (
    TEMP_NAME,
    check_policy_matches,
    leftover_files,
    read_snapshot,
)
from reliability.outage import (
    ext4_image,
    fill,
    mount_rights,
    small_tmpfs,
    turn_read_only,
)
from tests.harness import FakePort, call, db_rows, sim_config, start_daemon

#: How long nexusd may take to notice and repair (reconnect backoff 1 s,
#: 2 s, 4 s; policy repair backoff alike).
RECOVERY = 20.0
FROM_WEB = {"from": "web"}
#: What editors and package managers leave beside a policy file.
LEFTOVERS = (
    ".50-nexus.policy.swp",
    "50-nexus.policy~",
    "50-nexus.policy.rpmnew",
)


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RECOVERY
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {RECOVERY:g} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def dom0(tmp_path: Path) -> Iterator[Dom0]:
    dom0 = Dom0(tmp_path / "dom0").create()
    yield dom0
    dom0.close()


@pytest.fixture
def mounts(tmp_path: Path) -> None:
    why = mount_rights(tmp_path / "probe")
    if why is not None:
        pytest.skip(f"needs tmpfs and loop mounts (root): {why}")


def _start(dom0: Dom0) -> None:
    dom0.start_qubesd()
    dom0.start_nexusd()
    assert dom0.wait_serving()


def _seed_link(dom0: Dom0) -> None:
    for qube, name, ports in (("work", "web", [80]), ("db", "pg", [5432])):
        reply = dom0.call(
            "nexus.ContainerCreate", name, source=qube, payload={"ports": ports}
        )
        assert reply.ok, reply
    reply = dom0.call(
        "nexus.LinkRequest",
        "pg.5432",
        source="work",
        target="name db",
        payload=FROM_WEB,
    )
    assert reply.ok, reply


def _policy_matches(dom0: Dom0) -> bool:
    snap = read_snapshot(dom0.database)
    return not check_policy_matches(dom0.root, snap)


def _admin(dom0: Dom0, method: str, dest: str, arg: str = "") -> str:
    reply = asyncio.run(
        qubesd_call(dom0.layout.qubesd_socket, method, dest, arg)
    )
    return parse_reply(reply)


class TestQubesdOutage:
    def test_serves_from_last_view_and_reconciles_on_return(
        self, dom0: Dom0
    ) -> None:
        """If qubesd dies, nexusd keeps serving the guests it knew; when
        qubesd is back (a qube deleted and another tagged meanwhile),
        nexusd reconnects by itself, purges the deleted qube's containers
        and links, rewrites the links file, and serves the new guest."""
        _start(dom0)
        _seed_link(dom0)

        dom0.stop_qubesd(signal.SIGKILL)
        during = dom0.call("nexus.ContainerCreate", "api", source="work")
        listed = dom0.call("nexus.ContainerList", source="db")
        model = Dom0Model.load(dom0.layout)
        model.remove(model.find("db"))
        model.add_tag(model.find("personal"), "nexus-guest")
        dom0.start_qubesd()

        _eventually(
            lambda: dom0.call("nexus.ContainerList", source="personal").ok,
            "the newly tagged qube is served",
        )
        assert during.ok, during
        assert listed.ok, listed
        snap = read_snapshot(dom0.database)
        assert {k.qube for k in snap.containers} == {"work"}
        assert snap.links == {}
        _eventually(lambda: _policy_matches(dom0), "links file rewritten")

    def test_events_after_reconnect_are_applied(self, dom0: Dom0) -> None:
        """If qubesd restarted, events it sends afterwards still reach
        nexusd: a guest whose tag is removed is no longer served."""
        _start(dom0)
        dom0.stop_qubesd()
        dom0.start_qubesd()
        _eventually(
            lambda: dom0.call("nexus.ContainerList", source="work").ok,
            "served after the restart",
        )

        _admin(dom0, "admin.vm.tag.Remove", "work", "nexus-guest")

        _eventually(
            lambda: (
                dom0.call("nexus.ContainerList", source="work").code
                == "not_managed"
            ),
            "the untagged qube is refused",
        )
        assert dom0.call("nexus.ContainerList", source="db").ok


class TestPolicyFolderChanges:
    def test_editor_leftovers_change_nothing(self, dom0: Dom0) -> None:
        """If editors leave files beside the admin's policy (``.swp``,
        ``~``, ``.rpmnew``, each holding a deny-all), nexusd writes its links
        file as before and reports no link as blocked: qrexec ignores such
        names, and so does nexusd."""
        folder = dom0.layout.policy_dir
        for leftover in LEFTOVERS:
            (folder / leftover).write_text(
                "nexus.Connect * @anyvm @anyvm deny\n"
            )
        _start(dom0)

        _seed_link(dom0)
        listed = dom0.call("nexus.ContainerList", source="work")

        assert _policy_matches(dom0)
        links = listed.body["result"]["links"]
        assert [link["blocked"] for link in links] == [False]

    def test_admin_files_replaced_and_removed_are_read_afresh(
        self, dom0: Dom0
    ) -> None:
        """If the admin's file is replaced by a deny and later removed,
        nexusd reports the link blocked, then free again (the guest is
        not told which dom0 file blocks it)."""
        _start(dom0)
        _seed_link(dom0)
        user = dom0.layout.policy_dir / "30-user.policy"
        new = user.with_name("30-user.policy.tmp")

        new.write_text("nexus.Connect +pg.5432 work db deny\n")
        new.replace(user)
        blocked = dom0.call("nexus.ContainerList", source="work")
        user.unlink()
        free = dom0.call("nexus.ContainerList", source="work")

        assert blocked.body["result"]["links"][0]["blocked"] is True
        assert free.body["result"]["links"][0]["blocked"] is False

    def test_removed_links_file_is_written_again(self, dom0: Dom0) -> None:
        """If someone deletes nexusd's links file, the next change (or
        start) writes it whole again from the database."""
        _start(dom0)
        _seed_link(dom0)
        dom0.links_policy.unlink()

        reply = dom0.call("nexus.ContainerCreate", "api", source="work")
        dom0.kill_nexusd(signal.SIGTERM)
        dom0.start_nexusd()

        assert reply.ok
        assert _policy_matches(dom0)


class TestPolicyFolderFull:
    def test_link_is_kept_answered_unavailable_and_file_repaired(
        self, dom0: Dom0, mounts: None
    ) -> None:
        """If the runtime policy folder is full, a new link is recorded
        but answered unavailable, no temporary file is left, and once
        there is room nexusd writes the file by itself."""
        with small_tmpfs(dom0.layout.runtime_policy_dir, "64k") as folder:
            _start(dom0)
            for qube, name, ports in (
                ("work", "web", [80]),
                ("db", "pg", [5432]),
            ):
                assert dom0.call(
                    "nexus.ContainerCreate",
                    name,
                    source=qube,
                    payload={"ports": ports},
                ).ok
            filler = fill(folder)

            reply = dom0.call(
                "nexus.LinkRequest",
                "pg.5432",
                source="work",
                target="name db",
                payload=FROM_WEB,
            )
            left = sorted(p.name for p in folder.iterdir())
            filler.unlink()

            assert reply.code == "unavailable", reply
            assert TEMP_NAME not in left
            assert len(read_snapshot(dom0.database).links) == 1
            _eventually(lambda: _policy_matches(dom0), "links file repaired")
            assert leftover_files(dom0.root) == []


class TestStateFolderFull:
    def test_writes_unavailable_reads_served_recovers(
        self, dom0: Dom0, mounts: None
    ) -> None:
        """If the state folder is full, writes are answered unavailable,
        reads are served, nothing committed is lost, and writes work again
        as soon as there is room, without a restart."""
        with small_tmpfs(dom0.layout.nexusd_state_dir, "2m") as folder:
            _start(dom0)
            assert dom0.call("nexus.ContainerCreate", "web", source="work").ok
            filler = fill(folder)

            refused = dom0.call("nexus.ContainerCreate", "api", source="work")
            listed = dom0.call("nexus.ContainerList", source="work")
            filler.unlink()
            again = dom0.call("nexus.ContainerCreate", "api", source="work")

            assert refused.code == "unavailable", refused
            assert [c["name"] for c in listed.body["result"]["containers"]] == [
                "web"
            ]
            assert again.ok, again
            names = {k.name for k in read_snapshot(dom0.database).containers}
            assert names == {"web", "api"}


class TestStateFolderReadOnly:
    def test_writes_unavailable_and_nothing_lost(
        self, dom0: Dom0, mounts: None, tmp_path: Path
    ) -> None:
        """If the state folder's file system turns read-only (a disk
        error), writes are answered unavailable, reads are served, and
        after the admin remounts it every committed change is there."""
        state = dom0.layout.nexusd_state_dir
        image = tmp_path / "state.img"
        with ext4_image(state, image):
            _start(dom0)
            assert dom0.call("nexus.ContainerCreate", "web", source="work").ok
            turn_read_only(state)

            refused = dom0.call("nexus.ContainerCreate", "api", source="work")
            listed = dom0.call("nexus.ContainerList", source="work")
            dom0.kill_nexusd(signal.SIGTERM)

        assert refused.code == "unavailable", refused
        assert listed.ok, listed
        with ext4_image(state, image, fresh=False):
            names = {k.name for k in read_snapshot(dom0.database).containers}
        assert names == {"web"}


async def _web_and_pg(root: Path) -> Any:
    """nexusd with work's web (port 80) and db's pg (port 5432)."""
    port = FakePort()
    port.add("work", guest=True)
    port.add("db", guest=True)
    daemon = await start_daemon(root, port)
    for qube, name, ports in (("work", "web", [80]), ("db", "pg", [5432])):
        await call(
            daemon,
            "nexus.ContainerCreate",
            name,
            source=qube,
            payload={"ports": ports},
        )
    return daemon


class TestPolicyWriteFailure:
    """The same faults without mount rights: the write itself fails with
    the errno a full or read-only folder gives."""

    async def test_failed_write_leaves_old_file_and_no_temporary(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If writing the new file fails with ENOSPC, the old file stays
        byte for byte and no temporary file is left."""
        writer = LinkPolicyWriter(sim_config(tmp_path))
        await writer.install([LinkLine("pg", 5432, "work", "db")])
        before = writer.path.read_bytes()

        def no_space(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(linkpolicy.os, "write", no_space)
        with pytest.raises(OSError, match="No space"):
            await writer.install([])

        assert writer.path.read_bytes() == before
        assert not writer.temp_path.exists()

    async def test_temporary_file_of_a_crash_is_removed(
        self, tmp_path: Path
    ) -> None:
        """If a crash left the temporary file and the database still
        implies the same file, the next install removes it."""
        writer = LinkPolicyWriter(sim_config(tmp_path))
        await writer.install([])
        writer.temp_path.write_text("half a file")

        changed = await writer.install([])

        assert changed is False
        assert not writer.temp_path.exists()

    async def test_link_answered_unavailable_then_file_repaired(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the policy file cannot be written when a link is made, the
        link is kept, the call is answered unavailable, and nexusd writes
        the file by itself once it can."""
        daemon = await _web_and_pg(tmp_path)
        try:
            real_write = linkpolicy.os.write
            failing = [True]

            def write(fd: int, data: bytes) -> int:
                if failing[0]:
                    raise OSError(errno.EROFS, "Read-only file system")
                return real_write(fd, data)

            monkeypatch.setattr(linkpolicy.os, "write", write)
            reply = await call(
                daemon,
                "nexus.LinkRequest",
                "pg.5432",
                source="work",
                target="name db",
                payload=FROM_WEB,
            )
            path = daemon.config.links_policy_file
            withdrawn = not path.exists()
            failing[0] = False
            async with asyncio.timeout(RECOVERY):
                while not path.exists() or "nexus.Connect" not in (
                    path.read_text()
                ):
                    await asyncio.sleep(0.05)
        finally:
            await daemon.stop()

        assert reply["error"]["code"] == "unavailable"
        assert "recorded" in reply["error"]["message"]
        assert withdrawn
        assert len(db_rows(daemon, "links")) == 1

    async def test_removed_link_is_not_left_allowed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the file cannot be rewritten after a link is removed, the old
        file (which still allows it) is withdrawn at once: fail closed."""
        daemon = await _web_and_pg(tmp_path)
        try:
            await call(
                daemon,
                "nexus.LinkRequest",
                "pg.5432",
                source="work",
                target="name db",
                payload=FROM_WEB,
            )
            path = daemon.config.links_policy_file
            assert "nexus.Connect +pg.5432 work db allow" in path.read_text()

            def no_fds(fd: int, data: bytes) -> int:
                raise OSError(errno.EMFILE, "Too many open files")

            monkeypatch.setattr(linkpolicy.os, "write", no_fds)
            reply = await call(
                daemon,
                "nexus.LinkRemove",
                "pg.5432",
                source="db",
                target="name work",
                payload=FROM_WEB,
            )
            left_allowed = path.exists() and "allow" in path.read_text()
        finally:
            await daemon.stop()

        assert reply["error"]["code"] == "unavailable"
        assert not left_allowed
        assert db_rows(daemon, "links") == []


class _VanishingPort(FakePort):
    """Lists qubes that are gone by the time their tags are asked for,
    and fails the first few tag reads as an unreachable qubesd would."""

    def __init__(self, vanished: set[str], failures: int = 0) -> None:
        super().__init__()
        self.vanished = vanished
        self.failures = failures

    async def get_tags(self, qube: str) -> frozenset[str]:
        if self.failures:
            self.failures -= 1
            raise DaemonUnavailable("qubesd did not answer")
        if qube in self.vanished:
            raise NoSuchQube(f"no such qube: {qube!r}")
        return await super().get_tags(qube)


class TestReconcileRaces:
    async def test_qube_removed_during_reconcile_is_skipped(
        self, tmp_path: Path
    ) -> None:
        """If a listed qube is removed before nexusd reads its tags (the
        sweep of a half-made template at start does this), the reconcile
        still completes and the guests are served."""
        port = _VanishingPort({"nixos-imp1"})
        port.add("work", guest=True)
        port.add("nixos-imp1", "TemplateVM")

        daemon = await start_daemon(tmp_path, port)
        try:
            reply = await call(daemon, "nexus.ContainerList", source="work")
        finally:
            await daemon.stop()

        assert reply["ok"], reply

    async def test_reconcile_that_fails_is_retried(
        self, tmp_path: Path
    ) -> None:
        """If qubesd fails calls during the first reconcile, nexusd tries
        again by itself instead of staying unready."""
        port = _VanishingPort(set(), failures=1)
        port.add("work", guest=True)

        daemon = await start_daemon(tmp_path, port)
        try:
            reply = await call(daemon, "nexus.ContainerList", source="work")
        finally:
            await daemon.stop()

        assert reply["ok"], reply
