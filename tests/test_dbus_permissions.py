# SPDX-License-Identifier: MIT
"""Who may call nexusd over D-Bus: the shipped bus policy on a private
dbus-daemon refuses an unprivileged caller (uid nobody), and nexusd itself
refuses one when a bus configuration lets it through."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nexusd.dbus.bus import Caller
from nexusd.dbus.private_bus import PrivateBus
from nexusd.dbus.service import authorize
from nexusd.errors import Denied
from tests.harness import (
    FakePort,
    db_rows,
    lay_out_policy,
    populate,
    start_daemon,
)

NEXUSCTL = Path(sys.executable).with_name("nexusctl")
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to call as another user",
)


@pytest.fixture
def root(tmp_path: Path, shared_dir: Path) -> Path:
    return lay_out_policy(tmp_path, shared_dir)


def make_port() -> FakePort:
    port = FakePort()
    port.add("work", guest=True)
    port.add("db", guest=True)
    return port


async def linked_daemon(root: Path):
    daemon = await start_daemon(root, make_port())
    return daemon, await populate(daemon)


async def nexusctl_as_nobody(address: str, *argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *NOBODY,
        str(NEXUSCTL),
        *argv,
        env={**os.environ, "NEXUS_DBUS_ADDRESS": address},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class TestShippedBusPolicy:
    @pytest.fixture
    async def setup(self, root, monkeypatch):
        with PrivateBus() as bus:
            monkeypatch.setenv("NEXUS_DBUS_ADDRESS", bus.address)
            daemon, link_id = await linked_daemon(root)
            try:
                yield bus, daemon, link_id
            finally:
                await daemon.stop()

    async def test_nobody_cannot_remove_container(self, setup) -> None:
        """If uid nobody asks to remove a container, the bus refuses, the
        exit status is 1, and nothing changes."""
        bus, daemon, _ = setup
        before = db_rows(daemon, "audit")

        code, out, err = await nexusctl_as_nobody(
            bus.address, "container", "remove", "db", "postgres"
        )

        assert (code, out) == (1, "")
        assert err.startswith("nexusctl: the bus refused the call")
        assert err.rstrip().endswith("[denied]")
        assert len(db_rows(daemon, "containers")) == 2
        assert db_rows(daemon, "audit") == before
        assert "Rejected send message" in bus.log_path.read_text()

    async def test_nobody_cannot_remove_link(self, setup) -> None:
        """If uid nobody asks to remove a link, the bus refuses and the
        link stays."""
        bus, daemon, link_id = setup

        code, _, err = await nexusctl_as_nobody(
            bus.address, "link", "remove", link_id
        )

        assert code == 1
        assert "[denied]" in err
        assert [row[0] for row in db_rows(daemon, "links")] == [link_id]

    async def test_root_may_remove_link(self, setup) -> None:
        """If root asks the same, the link goes."""
        _, daemon, link_id = setup
        process = await asyncio.create_subprocess_exec(
            str(NEXUSCTL),
            "link",
            "remove",
            link_id,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, _ = await process.communicate()

        assert process.returncode == 0
        assert out.decode() == f"removed link {link_id}\n"
        assert db_rows(daemon, "links") == []


class TestNameOwnership:
    def test_nobody_cannot_own_the_name(self) -> None:
        """If uid nobody tries to own org.tesseraqt.Nexus1, the bus
        refuses, so no process can pose as nexusd."""
        with PrivateBus() as bus:
            result = subprocess.run(
                [
                    *NOBODY,
                    "dbus-send",
                    f"--bus={bus.address}",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.RequestName",
                    "string:org.tesseraqt.Nexus1",
                    "uint32:4",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )

        assert result.returncode != 0
        assert "AccessDenied" in result.stderr


class TestNexusdChecksToo:
    @pytest.fixture
    async def setup(self, root, monkeypatch):
        with PrivateBus(permissive=True) as bus:
            monkeypatch.setenv("NEXUS_DBUS_ADDRESS", bus.address)
            daemon, link_id = await linked_daemon(root)
            try:
                yield bus, daemon, link_id
            finally:
                await daemon.stop()

    async def test_nobody_refused_by_nexusd(self, setup) -> None:
        """If a bus lets uid nobody through, nexusd still refuses a change
        with code denied, and nothing is stored."""
        bus, daemon, link_id = setup
        before = db_rows(daemon, "audit")

        code, _, err = await nexusctl_as_nobody(
            bus.address, "link", "remove", link_id
        )

        assert code == 1
        assert err == (
            "nexusctl: only root and the group qubes may call RemoveLink"
            " [denied]\n"
        )
        assert len(db_rows(daemon, "links")) == 1
        assert db_rows(daemon, "audit") == before

    async def test_nobody_may_read_when_bus_allows(self, setup) -> None:
        """If a bus lets uid nobody through, reading methods answer (the
        bus policy decides who may read)."""
        bus, _, _ = setup

        code, out, _ = await nexusctl_as_nobody(bus.address, "--json", "status")

        assert code == 0
        assert '"links": 1' in out


class TestAuthorize:
    def test_root_allowed(self) -> None:
        """If the caller is uid 0, it may change things."""
        authorize(Caller(":1.1", 0), "RemoveLink")

    @pytest.mark.parametrize("uid", [None, 65534])
    def test_others_denied(self, uid) -> None:
        """If the caller is not root nor in group qubes (or unknown), it is
        denied with code denied."""
        with pytest.raises(Denied) as caught:
            authorize(Caller(":1.1", uid, gids=(65534,)), "RemoveLink")

        assert caught.value.code == "denied"
