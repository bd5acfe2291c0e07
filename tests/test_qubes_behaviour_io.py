# SPDX-License-Identifier: MIT
"""Both Admin API ports against the simulated qubesd: events, guest
services, volume import, and qubesd going away.

The fixtures (and the stand-ins for qrexec-client and the import script)
are those of ``test_qubes_behaviour``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexusd.errors import OperationError, Unavailable
from nexusd.qubes import (
    CONNECTION_ESTABLISHED,
    DaemonUnavailable,
    Event,
    NotHalted,
    NotRunning,
    ServiceCallFailed,
)
from tests.test_qubes_behaviour import GUARD, SERVICE, Sim, port, sim
from tests.test_qubes_socket_port import FakeQubesd
from tests.test_qubes_socket_streams import CONNECTED, stream_handler

__all__ = ["port", "sim"]


async def _next(stream: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(stream), GUARD)


async def _next_named(stream: AsyncIterator[Event], name: str) -> Event:
    while True:
        event = await _next(stream)
        if event.name == name:
            return event


class TestEvents:
    async def test_change_elsewhere_arrives_as_event(self, port) -> None:
        """If a feature is set on another connection, its event arrives."""
        stream = port.events()
        try:
            first = await _next(stream)
            await port.set_feature("db", "x", "on")
            event = await _next_named(stream, "domain-feature-set:x")
        finally:
            await stream.aclose()

        assert first.name == CONNECTION_ESTABLISHED
        assert first.subject is None
        assert event.subject == "db"
        assert event.kwargs == {"feature": "x", "value": "on"}

    async def test_qube_deletion_arrives_with_its_name(self, port) -> None:
        """If a qube is removed, domain-delete names it in kwargs."""
        stream = port.events()
        try:
            await _next(stream)
            await port.remove_qube("db")
            event = await _next_named(stream, "domain-delete")
        finally:
            await stream.aclose()

        assert event.subject is None
        assert event.kwargs == {"vm": "db"}

    async def test_reconnect_yields_marker_and_goes_on(
        self, port, sim: Sim
    ) -> None:
        """If qubesd goes away and comes back, the stream marks the
        reconnect and carries later events."""
        stream = port.events()
        try:
            await _next(stream)
            await sim.stop()
            await sim.start()
            marker = await _next(stream)
            await port.add_tag("work", "after")
            event = await _next_named(stream, "domain-tag-add:after")
        finally:
            await stream.aclose()

        assert marker.name == CONNECTION_ESTABLISHED
        assert marker.is_reconnect
        assert event.subject == "work"

    async def test_silent_new_stream_is_dropped(self, port, sim: Sim) -> None:
        """If a new stream sends nothing within the deadline, it is dropped
        and made again."""
        await sim.stop()
        port.call_timeout = 0.05
        handlers = [stream_handler(), stream_handler(CONNECTED)]

        async with FakeQubesd(sim.layout.qubesd_socket, handlers) as server:
            stream = port.events()
            try:
                marker = await _next(stream)
            finally:
                await stream.aclose()

        assert marker.name == CONNECTION_ESTABLISHED
        assert server.connections == 2

    async def test_outage_does_not_end_the_stream(self, port, sim: Sim) -> None:
        """If qubesd stays down for a while, the iterator waits, not
        raises, and resumes when qubesd is back."""
        stream = port.events()
        try:
            await _next(stream)
            await sim.stop()
            pending = asyncio.ensure_future(anext(stream))
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert not pending.done()
            await sim.start()
            marker = await asyncio.wait_for(pending, GUARD)
        finally:
            await stream.aclose()

        assert marker.name == CONNECTION_ESTABLISHED


class _Guest:
    """A socket service inside the simulated qube ``work``."""

    def __init__(self, rpc_dir: Path, name: str = SERVICE) -> None:
        self.path = rpc_dir / name
        self.calls: list[tuple[bytes, bytes]] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        header = await reader.readuntil(b"\x00")
        payload = await reader.read()
        self.calls.append((header, payload))
        writer.write(b"ok:" + payload)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> _Guest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_unix_server(
            self.handle, path=str(self.path)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class TestCallService:
    async def test_running_qube_answers(self, port, sim: Sim) -> None:
        """If the qube runs, the service gets qrexec's header and the
        payload, and its output is returned."""
        await port.start("work")
        async with _Guest(sim.layout.vm_rpc_dir("work")) as guest:
            output = await port.call_service(
                "work", f"{SERVICE}+web", b"{}", GUARD
            )

        assert output == b"ok:{}"
        assert guest.calls == [(f"{SERVICE}+web dom0\x00".encode(), b"{}")]

    async def test_halted_qube_is_not_started(self, port, sim: Sim) -> None:
        """If the qube is halted, NotRunning; it is not started and the
        service is not reached."""
        async with _Guest(sim.layout.vm_rpc_dir("work")) as guest:
            with pytest.raises(NotRunning) as caught:
                await port.call_service("work", SERVICE, b"", GUARD)

        assert caught.value.code == "qube_not_running"
        assert guest.calls == []
        assert sim.model.domains["work"].power_state == "Halted"

    async def test_missing_service_fails(self, port) -> None:
        """If the qube offers no such service, ServiceCallFailed."""
        await port.start("work")

        with pytest.raises(ServiceCallFailed) as caught:
            await port.call_service("work", "nexus.None", b"", GUARD)

        assert caught.value.code == "service_call_failed"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class TestImportVolume:
    @pytest.fixture(autouse=True)
    def _needs_root_for_qubesadmin(self, request) -> None:
        if "qubesadmin" in request.node.callspec.id and os.getuid() != 0:
            pytest.skip("qubesadmin runs the import script with sudo")

    async def test_streamed_bytes_land_in_the_volume(
        self, port, sim: Sim
    ) -> None:
        """If chunks add up to the size, the volume holds those bytes."""
        await port.import_volume(
            "work", "private", 6, _chunks(b"abc", b"", b"def")
        )

        image = sim.layout.vm_volume_dir("work") / "private.img"
        info = await port.volume_info("work", "private")
        assert image.read_bytes() == b"abcdef"
        assert info["size"] == "6"

    async def test_longer_stream_fails_and_keeps_volume(
        self, port, sim: Sim
    ) -> None:
        """If chunks exceed the size, the import fails, the volume is
        untouched."""
        with pytest.raises(OperationError):
            await port.import_volume(
                "work", "private", 4, _chunks(b"abc", b"def")
            )

        image = sim.layout.vm_volume_dir("work") / "private.img"
        assert not image.exists()

    async def test_shorter_stream_fails_and_keeps_volume(
        self, port, sim: Sim
    ) -> None:
        """If chunks fall short of the size, the import fails."""
        with pytest.raises(OperationError):
            await port.import_volume("work", "private", 10, _chunks(b"abc"))

        image = sim.layout.vm_volume_dir("work") / "private.img"
        assert not image.exists()

    async def test_running_qube_is_not_halted(self, port, sim: Sim) -> None:
        """If the qube runs, NotHalted; nothing is written."""
        await port.start("work")

        with pytest.raises(NotHalted):
            await port.import_volume("work", "private", 3, _chunks(b"abc"))

        image = sim.layout.vm_volume_dir("work") / "private.img"
        assert not image.exists()

    async def test_volumes_are_listed(self, port) -> None:
        """If volumes are listed, an AppVM has root, private and volatile."""
        volumes = await port.list_volumes("work")

        assert {"root", "private", "volatile"} <= set(volumes)


class TestUnavailable:
    async def test_stopped_qubesd_is_daemon_unavailable(
        self, port, sim: Sim
    ) -> None:
        """If qubesd is down, a call raises DaemonUnavailable, which is
        also nexusd's Unavailable."""
        await sim.stop()

        with pytest.raises(DaemonUnavailable) as caught:
            await port.list_qubes()

        assert caught.value.code == "qubesd_unavailable"
        assert isinstance(caught.value, Unavailable)
