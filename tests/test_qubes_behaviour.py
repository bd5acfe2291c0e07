# SPDX-License-Identifier: MIT
"""Both Admin API ports against the simulated qubesd: the same behaviour.

Every test runs on ``SocketPort`` and on ``QubesadminPort`` (the latter is
skipped where the real ``qubesadmin`` cannot be imported, as in CI).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexusd.errors import NotFound
from nexusd.qubes import (
    AdminPort,
    Event,
    FeatureNotFound,
    InvalidValue,
    NoSuchQube,
    NotHalted,
    NotRunning,
    QubeExists,
    QubeInUse,
    TagNotFound,
)
from nexusd.qubes.events import Backoff
from nexusd.qubes.socket_port import SocketPort
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import build_capture_machine
from nexusd.sim.model import Dom0Model
from nexusd.sim.qubesd import QubesdServer, serve_qubesd

#: Guard against a hang; never an assertion on speed.
GUARD = 10
FAST = Backoff(first=0.01, cap=0.05, jitter=0)
SERVICE = "nexus.agent.Sync"

_FAKE_QREXEC_CLIENT = """\
#!{python}
# qrexec-client stand-in: dom0 -> guest call into the simulated guest.
import pathlib, socket, sys
args = sys.argv[1:]
dest = args[args.index("-d") + 1]
_, _, rest = args[-1].partition(":QUBESRPC ")
service_and_arg, source = rest.rsplit(" ", 1)
rpc = pathlib.Path({root!r}) / "vms" / dest / "qubes-rpc"
names = [service_and_arg, service_and_arg.partition("+")[0]]
paths = [rpc / n for n in names if (rpc / n).exists()]
if not paths:
    sys.exit(127)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(str(paths[0]))
sock.sendall(f"{{service_and_arg}} {{source}}\\0".encode())
sock.sendall(sys.stdin.buffer.read())
sock.shutdown(socket.SHUT_WR)
while data := sock.recv(65536):
    sys.stdout.buffer.write(data)
"""

_FAKE_IMPORT_SCRIPT = """\
#!{python}
# /etc/qubes-rpc/admin.vm.volume.ImportWithSize stand-in for the sim.
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({socket!r})
target = os.environ["QREXEC_REQUESTED_TARGET"]
header = f"admin.vm.volume.ImportWithSize+{{sys.argv[1]}} dom0 name {{target}}"
sock.sendall(header.encode() + b"\\0")
try:
    while data := sys.stdin.buffer.read1(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
except OSError:
    pass
while data := sock.recv(65536):
    sys.stdout.buffer.write(data)
"""


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


class Sim:
    """A simulated dom0 with its qubesd socket, restartable."""

    def __init__(self, root: Path) -> None:
        self.layout = SimLayout(root)
        self.model: Dom0Model = build_capture_machine(self.layout)
        self.server: QubesdServer | None = None

    async def start(self) -> None:
        self.server = await serve_qubesd(self.model, self.layout.qubesd_socket)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    machine = Sim(tmp_path / "dom0")
    await machine.start()
    yield machine
    await machine.stop()


def _socket_port(sim: Sim, tmp_path: Path, monkeypatch) -> AdminPort:
    return SocketPort(
        sim.layout.qubesd_socket, sim_root=sim.layout.root, backoff=FAST
    )


def _qubesadmin_port(sim: Sim, tmp_path: Path, monkeypatch) -> AdminPort:
    pytest.importorskip(
        "qubesadmin",
        reason="the real qubesadmin is not importable (it is not on PyPI)",
    )
    import qubesadmin.config

    from nexusd.qubes.qubesadmin_port import QubesadminPort

    bin_dir = tmp_path / "fake-bin"
    client = _script(
        bin_dir / "qrexec-client",
        _FAKE_QREXEC_CLIENT.format(
            python=sys.executable, root=str(sim.layout.root)
        ),
    )
    services = tmp_path / "fake-qubes-rpc"
    _script(
        services / "admin.vm.volume.ImportWithSize",
        _FAKE_IMPORT_SCRIPT.format(
            python=sys.executable, socket=str(sim.layout.qubesd_socket)
        ),
    )
    monkeypatch.setattr(qubesadmin.config, "QREXEC_CLIENT", str(client))
    for name in ("QUBESD_SOCKET", "QREXEC_SERVICES_DIR"):
        monkeypatch.setattr(
            qubesadmin.config, name, getattr(qubesadmin.config, name)
        )
    return QubesadminPort(
        sim.layout.qubesd_socket, services_dir=services, backoff=FAST
    )


@pytest.fixture(
    params=[
        pytest.param(_socket_port, id="socket"),
        pytest.param(
            _qubesadmin_port, id="qubesadmin", marks=pytest.mark.qubesadmin
        ),
    ]
)
async def port(
    request, sim: Sim, tmp_path: Path, monkeypatch
) -> AsyncIterator[AdminPort]:
    made = request.param(sim, tmp_path, monkeypatch)
    yield made
    await made.close()


async def _next(stream: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(stream), GUARD)


async def _next_named(stream: AsyncIterator[Event], name: str) -> Event:
    while True:
        event = await _next(stream)
        if event.name == name:
            return event


class TestInterface:
    async def test_port_satisfies_the_protocol(self, port) -> None:
        """If a port is built, it has every method of AdminPort."""
        assert isinstance(port, AdminPort)


class TestListQubes:
    async def test_lists_every_qube_with_class_and_state(
        self, port, sim: Sim
    ) -> None:
        """If qubes are listed, each has the model's class and power state."""
        listed = await port.list_qubes()

        assert sorted(listed) == sorted(sim.model.domains)
        assert listed["work"].klass == "AppVM"
        assert listed["nixos-25.05"].klass == "TemplateVM"
        assert listed["work"].power_state == "Halted"
        assert listed["dom0"].power_state == "Running"
        assert listed["work"].uuid == "e8bd7c04-5129-5757-8fcd-3fdc4d63256f"

    async def test_started_qube_is_listed_running(self, port) -> None:
        """If a qube is started, the next list shows it running."""
        await port.start("work")

        listed = await port.list_qubes()

        assert listed["work"].power_state == "Running"
        assert listed["work"].running


class TestTags:
    async def test_added_tag_is_listed(self, port, sim: Sim) -> None:
        """If a tag is added, get_tags returns it and the model has it."""
        await port.add_tag("work", "nexus-guest")

        tags = await port.get_tags("work")

        assert "nexus-guest" in tags
        assert "nexus-guest" in sim.model.domains["work"].tags

    async def test_removed_tag_is_gone(self, port, sim: Sim) -> None:
        """If a tag is removed, it is no longer listed."""
        await port.add_tag("work", "nexus-guest")

        await port.remove_tag("work", "nexus-guest")

        assert "nexus-guest" not in await port.get_tags("work")

    async def test_removing_absent_tag_is_tag_not_found(
        self, port, sim: Sim
    ) -> None:
        """If an absent tag is removed, TagNotFound says so."""
        before = set(sim.model.domains["work"].tags)

        with pytest.raises(TagNotFound) as caught:
            await port.remove_tag("work", "absent")

        assert caught.value.code == "tag_not_found"
        assert caught.value.qubesd_class == "QubesTagNotFoundError"
        assert isinstance(caught.value, NotFound)
        assert sim.model.domains["work"].tags == before

    async def test_tag_with_space_is_refused_before_sending(
        self, port, sim: Sim
    ) -> None:
        """If a tag holds a space, it is refused and nothing is stored."""
        before = set(sim.model.domains["work"].tags)

        with pytest.raises(InvalidValue) as caught:
            await port.add_tag("work", "a b")

        assert caught.value.code == "invalid_value"
        assert caught.value.qubesd_class == ""
        assert sim.model.domains["work"].tags == before

    async def test_tags_of_missing_qube_is_no_such_qube(self, port) -> None:
        """If the qube does not exist, NoSuchQube is raised."""
        with pytest.raises(NoSuchQube) as caught:
            await port.get_tags("no-such-qube")

        assert caught.value.code == "no_such_qube"


class TestFeatures:
    async def test_unset_feature_is_none(self, port) -> None:
        """If a feature is not set, get_feature returns None."""
        assert await port.get_feature("work", "os-distribution") is None

    async def test_set_feature_reads_back(self, port, sim: Sim) -> None:
        """If a feature is set, it reads back and is listed with its value."""
        await port.set_feature("work", "service.nexus-agent", "1")
        await port.set_feature("work", "empty", "")

        assert await port.get_feature("work", "service.nexus-agent") == "1"
        assert await port.get_feature("work", "empty") == ""
        assert await port.list_features("work") == {
            "service.nexus-agent": "1",
            "empty": "",
        }
        assert sim.model.domains["work"].features["empty"] == ""

    async def test_removed_feature_is_none(self, port) -> None:
        """If a feature is removed, get_feature returns None again."""
        await port.set_feature("work", "x", "1")

        await port.remove_feature("work", "x")

        assert await port.get_feature("work", "x") is None

    async def test_removing_unset_feature_is_feature_not_found(
        self, port
    ) -> None:
        """If an unset feature is removed, FeatureNotFound is raised."""
        with pytest.raises(FeatureNotFound) as caught:
            await port.remove_feature("work", "x")

        assert caught.value.code == "feature_not_found"

    async def test_non_ascii_value_is_refused_before_sending(
        self, port, sim: Sim
    ) -> None:
        """If a feature value is not ASCII, it is refused, nothing stored."""
        with pytest.raises(InvalidValue) as caught:
            await port.set_feature("work", "x", "é")

        assert caught.value.code == "invalid_value"
        assert "x" not in sim.model.domains["work"].features

    async def test_template_features_are_not_listed_on_its_qube(
        self, port
    ) -> None:
        """If a template has a feature, its qube's list does not show it."""
        assert await port.list_features("nixos-25.05") == {
            "os-distribution": "nixos"
        }
        assert await port.list_features("work") == {}


class TestProperties:
    async def test_set_label_reads_as_not_default(self, port) -> None:
        """If a label is read, its type is label and it is not default."""
        value = await port.get_property("work", "label")

        assert (value.is_default, value.type, value.value) == (
            False,
            "label",
            "blue",
        )

    async def test_unset_vm_property_is_none(self, port) -> None:
        """If a vm-typed property is empty, its value is None."""
        value = await port.get_property("work", "netvm")

        assert (value.is_default, value.type, value.value) == (
            True,
            "vm",
            None,
        )

    async def test_set_then_reset_memory(self, port) -> None:
        """If memory is set then reset, it reads set, then default again."""
        await port.set_property("work", "memory", "600")
        set_value = await port.get_property("work", "memory")
        await port.reset_property("work", "memory")
        reset_value = await port.get_property("work", "memory")

        assert (set_value.is_default, set_value.value) == (False, "600")
        assert reset_value.is_default
        assert reset_value.type == "int"

    async def test_unparsable_value_is_invalid_value(
        self, port, sim: Sim
    ) -> None:
        """If qubesd cannot parse a value, InvalidValue; nothing changes."""
        with pytest.raises(InvalidValue) as caught:
            await port.set_property("work", "memory", "lots")

        assert caught.value.code == "invalid_value"
        assert caught.value.qubesd_class == "QubesValueError"
        assert "memory" not in sim.model.domains["work"].values

    async def test_unknown_property_is_no_such_property(self, port) -> None:
        """If a template is asked for 'template', NoSuchProperty."""
        with pytest.raises(NotFound) as caught:
            await port.get_property("nixos-25.05", "template")

        assert caught.value.code == "no_such_property"

    async def test_global_property_round_trip(self, port, sim: Sim) -> None:
        """If default_template is set globally, it reads back."""
        before = await port.get_global_property("default_template")

        await port.set_global_property("default_template", "fedora-42")
        after = await port.get_global_property("default_template")

        assert (before.type, before.value) == ("vm", "nixos-25.05")
        assert (after.is_default, after.value) == (False, "fedora-42")


class TestCreateRemove:
    async def test_created_qube_is_listed(self, port, sim: Sim) -> None:
        """If a qube is created, it is listed with its class and label."""
        await port.create_qube("AppVM", "new-qube", "green", "nixos-25.05")

        listed = await port.list_qubes()
        label = await port.get_property("new-qube", "label")

        assert listed["new-qube"].klass == "AppVM"
        assert label.value == "green"
        assert "created-by-dom0" in await port.get_tags("new-qube")

    async def test_existing_name_is_qube_exists(self, port, sim: Sim) -> None:
        """If the name is taken, QubeExists; the qube is unchanged."""
        with pytest.raises(QubeExists) as caught:
            await port.create_qube("AppVM", "work", "red", "nixos-25.05")

        assert caught.value.code == "qube_exists"
        assert caught.value.qubesd_class == "QubesVMAlreadyExistsError"
        assert sim.model.domains["work"].values["label"] == "blue"

    async def test_missing_template_is_no_such_qube(
        self, port, sim: Sim
    ) -> None:
        """If the template does not exist, NoSuchQube; nothing is made."""
        with pytest.raises(NoSuchQube) as caught:
            await port.create_qube("AppVM", "new-qube", "red", "no-such")

        assert caught.value.code == "no_such_qube"
        assert "new-qube" not in sim.model.domains

    async def test_bad_name_is_refused_before_sending(
        self, port, sim: Sim
    ) -> None:
        """If the name breaks qubesd's grammar, it is refused locally."""
        with pytest.raises(InvalidValue):
            await port.create_qube("AppVM", "-bad", "red", "nixos-25.05")

        assert "-bad" not in sim.model.domains

    async def test_removed_qube_is_gone(self, port, sim: Sim) -> None:
        """If a halted unused qube is removed, it is no longer listed."""
        await port.remove_qube("db")

        assert "db" not in await port.list_qubes()
        assert "db" not in sim.model.domains

    async def test_template_in_use_is_qube_in_use(self, port, sim: Sim) -> None:
        """If a template is in use, QubeInUse; it stays."""
        with pytest.raises(QubeInUse) as caught:
            await port.remove_qube("nixos-25.05")

        assert caught.value.code == "qube_in_use"
        assert "nixos-25.05" in sim.model.domains

    async def test_running_qube_is_not_halted(self, port, sim: Sim) -> None:
        """If the qube runs, NotHalted; it stays."""
        await port.start("db")

        with pytest.raises(NotHalted) as caught:
            await port.remove_qube("db")

        assert caught.value.code == "qube_not_halted"
        assert "db" in sim.model.domains

    async def test_missing_qube_is_no_such_qube(self, port) -> None:
        """If the qube does not exist, NoSuchQube."""
        with pytest.raises(NoSuchQube):
            await port.remove_qube("no-such-qube")


class TestPower:
    async def test_shutdown_halts_a_running_qube(self, port) -> None:
        """If a running qube is shut down, it is listed halted."""
        await port.start("work")

        await port.shutdown("work", wait=True)

        assert (await port.list_qubes())["work"].power_state == "Halted"

    async def test_shutdown_of_halted_qube_is_not_running(self, port) -> None:
        """If a halted qube is shut down, NotRunning."""
        with pytest.raises(NotRunning) as caught:
            await port.shutdown("work")

        assert caught.value.code == "qube_not_running"

    async def test_kill_halts_a_running_qube(self, port) -> None:
        """If a running qube is killed, it is listed halted."""
        await port.start("work")

        await port.kill("work")

        assert (await port.list_qubes())["work"].power_state == "Halted"
