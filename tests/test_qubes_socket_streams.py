# SPDX-License-Identifier: MIT
"""SocketPort's streams: admin.Events from misbehaving servers, services
in simulated guests, and the bounds of a streamed volume import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nexusd.qubes import (
    CONNECTION_ESTABLISHED,
    Event,
    InvalidValue,
    QubesError,
    ServiceCallFailed,
)
from nexusd.qubes.socket_port import SocketPort
from tests.test_qubes_socket_port import (
    GUARD,
    FakeQubesd,
    Handler,
    answer,
    make_port,
)

CONNECTED = b"1\x00\x00connection-established\x00\x00"


def stream_handler(*messages: bytes, hold: bool = True) -> Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()
        for message in messages:
            writer.write(message)
        await writer.drain()
        if hold:
            await asyncio.Event().wait()

    return handler


async def _events(port: SocketPort, count: int) -> list[Event]:
    stream = port.events()
    try:
        return [
            await asyncio.wait_for(anext(stream), GUARD) for _ in range(count)
        ]
    finally:
        await stream.aclose()


class TestEventStream:
    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(b"0\x00", id="not-an-event"),
            pytest.param(b"1\x00" + b"x" * 70000, id="too-long"),
            pytest.param(b"1\x00work\x00", id="cut-short"),
            pytest.param(b"1\x00bad name\x00ev\x00\x00", id="bad-subject"),
            pytest.param(b"1\x00\x00Bad Event\x00\x00", id="bad-event-name"),
            pytest.param(
                b"1\x00\x00ev\x00k\x00v\x00k\x00v\x00\x00", id="dup-key"
            ),
            pytest.param(
                b"1\x00\x00ev\x00\xff\x00v\x00\x00", id="key-not-utf8"
            ),
        ],
    )
    async def test_bad_message_reconnects(
        self, tmp_path: Path, bad: bytes
    ) -> None:
        """If a message breaks the protocol, the connection is dropped and
        the next one starts with the reconnect marker."""
        port = make_port(tmp_path)
        handlers = [
            stream_handler(CONNECTED, bad, hold=False),
            stream_handler(CONNECTED),
        ]

        with capture_logs() as logs:
            async with FakeQubesd(port.socket_path, handlers) as server:
                events = await _events(port, 2)

        assert [e.name for e in events] == [CONNECTION_ESTABLISHED] * 2
        assert server.connections == 2
        lost = [e for e in logs if e["event"] == "qubesd_events_disconnected"]
        assert lost[0]["reason"].startswith("BadReply")

    async def test_stalled_message_hits_the_deadline(
        self, tmp_path: Path
    ) -> None:
        """If a message starts and never ends, the connection is dropped
        at the message deadline and made again."""
        port = make_port(tmp_path, call_timeout=0.05)
        handlers = [
            stream_handler(CONNECTED, b"1\x00work\x00dom"),
            stream_handler(CONNECTED),
        ]

        async with FakeQubesd(port.socket_path, handlers) as server:
            events = await _events(port, 2)

        assert [e.name for e in events] == [CONNECTION_ESTABLISHED] * 2
        assert server.connections == 2

    async def test_silent_new_stream_is_dropped(self, tmp_path: Path) -> None:
        """If a new stream sends nothing within the deadline (qubesd sends
        its marker at once), it is dropped and made again."""
        port = make_port(tmp_path, call_timeout=0.05)
        handlers = [stream_handler(), stream_handler(CONNECTED)]

        async with FakeQubesd(port.socket_path, handlers) as server:
            events = await _events(port, 1)

        assert events[0].name == CONNECTION_ESTABLISHED
        assert server.connections == 2

    async def test_missing_marker_is_supplied(self, tmp_path: Path) -> None:
        """If a stream does not open with connection-established, the
        marker is yielded before its first event."""
        port = make_port(tmp_path)
        first = b"1\x00work\x00domain-start\x00start_guid\x00True\x00\x00"

        async with FakeQubesd(port.socket_path, [stream_handler(first)]):
            events = await _events(port, 2)

        assert events == [
            Event(None, CONNECTION_ESTABLISHED, {}),
            Event("work", "domain-start", {"start_guid": "True"}),
        ]

    async def test_quiet_stream_is_not_dropped(self, tmp_path: Path) -> None:
        """If qubesd sends nothing for longer than the message deadline,
        the stream stays open (no deadline between messages)."""
        port = make_port(tmp_path, call_timeout=0.02)
        later = b"1\x00\x00domain-add\x00vm\x00new\x00\x00"

        async def slow(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.read()
            writer.write(CONNECTED)
            for _ in range(10):
                await asyncio.sleep(0.01)
            writer.write(later)
            await asyncio.Event().wait()

        async with FakeQubesd(port.socket_path, [slow]) as server:
            events = await _events(port, 2)

        assert events[1] == Event(None, "domain-add", {"vm": "new"})
        assert server.connections == 1


class _GuestService:
    def __init__(self, path: Path, reply: bytes = b"", *, answer: bool = True):
        self.path = path
        self.reply = reply
        self.answer = answer
        self.headers: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.headers.append(await reader.readuntil(b"\x00"))
        await reader.read()
        if not self.answer:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        writer.write(self.reply)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> _GuestService:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.server = await asyncio.start_unix_server(
            self.handle, path=str(self.path)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _running(qube: str) -> Handler:
    line = f"{qube} class=AppVM state=Running\n".encode()
    return answer(b"0\x00" + line)


class TestCallServiceSim:
    async def test_service_with_argument_file_wins(
        self, tmp_path: Path
    ) -> None:
        """If both SERVICE+ARG and SERVICE exist, SERVICE+ARG is called."""
        root = tmp_path / "dom0"
        rpc = root / "vms" / "work" / "qubes-rpc"
        port = SocketPort(root / "qubesd.sock", sim_root=root)
        (root).mkdir()
        specific = _GuestService(rpc / "nexus.Sync+web", b"specific")
        general = _GuestService(rpc / "nexus.Sync", b"general")

        async with FakeQubesd(port.socket_path, [_running("work")]):
            async with specific, general:
                output = await port.call_service(
                    "work", "nexus.Sync+web", b"", GUARD
                )

        assert output == b"specific"
        assert specific.headers == [b"nexus.Sync+web dom0\x00"]
        assert general.headers == []

    async def test_service_without_argument_gets_trailing_plus(
        self, tmp_path: Path
    ) -> None:
        """If no argument is given, the header says ``SERVICE+`` as qrexec
        writes it."""
        root = tmp_path / "dom0"
        root.mkdir()
        port = SocketPort(root / "qubesd.sock", sim_root=root)
        service = _GuestService(
            root / "vms" / "work" / "qubes-rpc" / "nexus.Sync"
        )

        async with FakeQubesd(port.socket_path, [_running("work")]), service:
            await port.call_service("work", "nexus.Sync", b"", GUARD)

        assert service.headers == [b"nexus.Sync+ dom0\x00"]

    async def test_oversized_output_fails(self, tmp_path: Path) -> None:
        """If the guest sends more than the cap, ServiceCallFailed."""
        root = tmp_path / "dom0"
        root.mkdir()
        port = SocketPort(root / "qubesd.sock", sim_root=root)
        big = b"x" * (1024 * 1024 + 1)
        service = _GuestService(
            root / "vms" / "work" / "qubes-rpc" / "nexus.Sync", big
        )

        async with FakeQubesd(port.socket_path, [_running("work")]), service:
            with pytest.raises(ServiceCallFailed) as caught:
                await port.call_service("work", "nexus.Sync", b"", GUARD)

        assert "over" in caught.value.message

    async def test_silent_service_hits_the_timeout(
        self, tmp_path: Path
    ) -> None:
        """If the guest never answers, ServiceCallFailed at the timeout."""
        root = tmp_path / "dom0"
        root.mkdir()
        port = SocketPort(root / "qubesd.sock", sim_root=root)
        service = _GuestService(
            root / "vms" / "work" / "qubes-rpc" / "nexus.Sync", answer=False
        )

        async with FakeQubesd(port.socket_path, [_running("work")]), service:
            with pytest.raises(ServiceCallFailed) as caught:
                await port.call_service("work", "nexus.Sync", b"", 0.05)

        assert "no answer" in caught.value.message

    @pytest.mark.parametrize(
        "service",
        ["", "nexus Sync", "nexus.Sync\x00", "../x", "nexus.Sync+a/b", "é"],
    )
    async def test_malformed_service_name_is_refused(
        self, tmp_path: Path, service: str
    ) -> None:
        """If the service name leaves qrexec's grammar, nothing is called."""
        port = SocketPort(tmp_path / "qubesd.sock", sim_root=tmp_path)

        async with FakeQubesd(port.socket_path, [_running("work")]) as server:
            with pytest.raises(InvalidValue):
                await port.call_service("work", service, b"", GUARD)

        assert server.connections <= 1

    async def test_without_sim_root_fails(self, tmp_path: Path) -> None:
        """If the port has no simulated dom0, call_service refuses."""
        port = make_port(tmp_path)

        with pytest.raises(ServiceCallFailed):
            await port.call_service("work", "nexus.Sync", b"", GUARD)


class _ImportSink:
    """Reads an import request to EOF and fails it, keeping its length."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while chunk := await reader.read(65536):
            self.received += len(chunk)
        writer.write(b"2\x00QubesException\x00\x00Data import failed\x00")
        await writer.drain()


async def _many(chunk: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield chunk


class TestImportBounds:
    async def test_at_most_one_byte_past_size_is_sent(
        self, tmp_path: Path
    ) -> None:
        """If the chunks run far past the size, only size + 1 bytes of
        image go out and the import fails."""
        port = make_port(tmp_path)
        sink = _ImportSink()
        header = (
            b"admin.vm.volume.ImportWithSize+private dom0 name work\x001000\n"
        )

        async with FakeQubesd(port.socket_path, [sink]):
            with pytest.raises(QubesError):
                await port.import_volume(
                    "work", "private", 1000, _many(b"x" * 4096, 100)
                )

        assert sink.received == len(header) + 1001

    async def test_negative_size_is_refused(self, tmp_path: Path) -> None:
        """If the size is negative, nothing is sent."""
        port = make_port(tmp_path)

        async with FakeQubesd(port.socket_path, [_ImportSink()]) as server:
            with pytest.raises(InvalidValue):
                await port.import_volume("work", "private", -1, _many(b"", 0))

        assert server.connections == 0
