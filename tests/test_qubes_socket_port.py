# SPDX-License-Identifier: MIT
"""SocketPort on the wire: byte-exact requests from the real qubesd's
transcripts, and servers that misbehave (endless, silent, malformed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nexusd.qubes import (
    CONNECTION_ESTABLISHED,
    BadReply,
    DaemonUnavailable,
    Event,
    InvalidValue,
    NoSuchProperty,
    NoSuchQube,
    PropertyValue,
    QubeExists,
    QubeInUse,
    QubesError,
    ServiceCallFailed,
    TagNotFound,
)
from nexusd.qubes.events import Backoff
from nexusd.qubes.socket_port import SocketPort

#: Guard against a hang; never an assertion on speed.
GUARD = 10
FAST = Backoff(first=0.01, cap=0.05, jitter=0)

Handler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


def _transcript(shared_dir: Path, name: str) -> tuple[bytes, bytes]:
    path = shared_dir / "fixtures" / "qubesd-transcripts" / name
    record = json.loads(path.read_text())
    return (
        base64.b64decode(record["raw_request_b64"]),
        base64.b64decode(record["response_b64"]),
    )


class FakeQubesd:
    """A Unix socket server: each connection runs the next handler."""

    def __init__(self, path: Path, handlers: list[Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        handler = self.handlers[min(self.connections, len(self.handlers) - 1)]
        self.connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self.tasks.discard(task)

    async def __aenter__(self) -> FakeQubesd:
        self.server = await asyncio.start_unix_server(
            self._serve, path=str(self.path)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


class Replay:
    """Answers requests read to EOF from a table of raw request bytes."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table
        self.requests: list[bytes] = []

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = await reader.read()
        self.requests.append(request)
        reply = self.table.get(request)
        if reply is not None:
            writer.write(reply)
            await writer.drain()


def _port(tmp_path: Path, **kwargs: Any) -> SocketPort:
    return SocketPort(tmp_path / "qubesd.sock", backoff=FAST, **kwargs)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "qubesd.sock"


#: (transcript, the call nexusd makes, the outcome: a value or an error).
CASES: list[tuple[str, Callable[[SocketPort], Awaitable[Any]], Any]] = [
    (
        "03-admin.vm.property.Get-work-label.json",
        lambda p: p.get_property("work", "label"),
        PropertyValue(False, "label", "blue"),
    ),
    (
        "05-admin.vm.property.Get-work-netvm.json",
        lambda p: p.get_property("work", "netvm"),
        PropertyValue(True, "vm", None),
    ),
    (
        "08-admin.vm.property.Get-work-maxmem.json",
        lambda p: p.get_property("work", "maxmem"),
        PropertyValue(True, "int", "4000"),
    ),
    (
        "10-admin.vm.property.Get-nixos-template-missing-prop.json",
        lambda p: p.get_property("nixos-25.05", "template"),
        NoSuchProperty,
    ),
    (
        "11-admin.vm.property.Get-missing-vm.json",
        lambda p: p.get_property("no-such-qube", "label"),
        NoSuchQube,
    ),
    (
        "14-admin.vm.property.Set-work-memory.json",
        lambda p: p.set_property("work", "memory", "600"),
        None,
    ),
    (
        "16-admin.vm.property.Set-work-memory-invalid.json",
        lambda p: p.set_property("work", "memory", "lots"),
        InvalidValue,
    ),
    (
        "17-admin.vm.property.Reset-work-memory.json",
        lambda p: p.reset_property("work", "memory"),
        None,
    ),
    (
        "18-admin.property.Get-default_template.json",
        lambda p: p.get_global_property("default_template"),
        PropertyValue(False, "vm", "nixos-25.05"),
    ),
    (
        "20-admin.vm.feature.Get-nixos-25.05-os-distribution.json",
        lambda p: p.get_feature("nixos-25.05", "os-distribution"),
        "nixos",
    ),
    (
        "21-admin.vm.feature.Get-work-missing.json",
        lambda p: p.get_feature("work", "os-distribution"),
        None,
    ),
    (
        "23-admin.vm.feature.Set-work.json",
        lambda p: p.set_feature("work", "capture-feature", "value-1"),
        None,
    ),
    (
        "26-admin.vm.feature.Remove-work.json",
        lambda p: p.remove_feature("work", "capture-feature"),
        None,
    ),
    (
        "27-admin.vm.tag.List-work.json",
        lambda p: p.get_tags("work"),
        frozenset({"audiovm-dom0", "guivm-dom0"}),
    ),
    (
        "28-admin.vm.tag.Set-work.json",
        lambda p: p.add_tag("work", "capture-tag"),
        None,
    ),
    (
        "32-admin.vm.tag.Remove-work.json",
        lambda p: p.remove_tag("work", "capture-tag"),
        None,
    ),
    (
        "33-admin.vm.tag.Remove-work-absent.json",
        lambda p: p.remove_tag("work", "capture-tag"),
        TagNotFound,
    ),
    (
        "40-admin.vm.Create.AppVM-existing-name.json",
        lambda p: p.create_qube("AppVM", "work", "red", "nixos-25.05"),
        QubeExists,
    ),
    (
        "41-admin.vm.Create.AppVM-bad-label.json",
        lambda p: p.create_qube(
            "AppVM", "capture-new", "no-such-colour", "nixos-25.05"
        ),
        InvalidValue,
    ),
    (
        "42-admin.vm.Create.AppVM-missing-template.json",
        lambda p: p.create_qube(
            "AppVM", "capture-new", "red", "no-such-template"
        ),
        NoSuchQube,
    ),
    (
        "43-admin.vm.Create.AppVM-ok.json",
        lambda p: p.create_qube("AppVM", "capture-new", "green", "nixos-25.05"),
        None,
    ),
    (
        "46-admin.vm.Remove-capture-new.json",
        lambda p: p.remove_qube("capture-new"),
        None,
    ),
    (
        "47-admin.vm.Remove-capture-new-again.json",
        lambda p: p.remove_qube("capture-new"),
        NoSuchQube,
    ),
    (
        "48-admin.vm.Remove-template-in-use.json",
        lambda p: p.remove_qube("nixos-25.05"),
        QubeInUse,
    ),
    (
        "51-admin.vm.Start-work-offline.json",
        lambda p: p.start("work"),
        QubesError,
    ),
    (
        "53-unknown-method.json",
        lambda p: p.call("dom0", "admin.no.SuchMethod"),
        InvalidValue,
    ),
]


class TestTranscripts:
    @pytest.mark.parametrize(
        ("name", "call", "outcome"), CASES, ids=[c[0][:2] for c in CASES]
    )
    async def test_request_is_byte_exact_and_reply_parsed(
        self, tmp_path: Path, shared_dir: Path, name, call, outcome
    ) -> None:
        """If nexusd makes a call the real qubesd answered, its request
        equals the captured bytes and the reply gives the outcome."""
        raw, reply = _transcript(shared_dir, name)
        replay = Replay({raw: reply})
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [replay]):
            if isinstance(outcome, type) and issubclass(outcome, Exception):
                with pytest.raises(outcome) as caught:
                    await call(port)
                assert type(caught.value) is outcome
                assert caught.value.qubesd_class
            else:
                assert await call(port) == outcome

        assert replay.requests == [raw]

    async def test_list_qubes_reads_every_line(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If qubesd lists five qubes, each comes with class, state, uuid."""
        raw, reply = _transcript(shared_dir, "01-admin.vm.List-dom0.json")
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [Replay({raw: reply})]):
            listed = await port.list_qubes()

        assert sorted(listed) == [
            "db",
            "dom0",
            "fedora-42",
            "nixos-25.05",
            "work",
        ]
        assert listed["fedora-42"].klass == "TemplateVM"
        assert listed["dom0"].power_state == "Running"
        assert listed["db"].uuid == "3a35a521-c1b8-5f4a-b98b-4013d2c214f2"

    async def test_list_features_is_list_then_get(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If features are listed, List then Get go out byte for byte."""
        listing = _transcript(
            shared_dir, "19-admin.vm.feature.List-nixos-25.05.json"
        )
        getting = _transcript(
            shared_dir,
            "20-admin.vm.feature.Get-nixos-25.05-os-distribution.json",
        )
        replay = Replay(dict([listing, getting]))
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [replay]):
            features = await port.list_features("nixos-25.05")

        assert features == {"os-distribution": "nixos"}
        assert replay.requests == [listing[0], getting[0]]

    async def test_bad_name_is_never_sent(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If a name breaks qubesd's grammar (transcript 38), nexusd
        refuses it and opens no connection."""
        raw, reply = _transcript(
            shared_dir, "38-admin.vm.Create.AppVM-bad-name.json"
        )
        replay = Replay({raw: reply})
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [replay]) as server:
            with pytest.raises(InvalidValue) as caught:
                await port.create_qube(
                    "AppVM", "-bad-name", "red", "nixos-25.05"
                )

        assert caught.value.qubesd_class == ""
        assert server.connections == 0

    async def test_events_stream_is_decoded_in_order(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If qubesd sends the captured stream, every event comes out in
        order with its subject and arguments."""
        raw, stream_bytes = _transcript(
            shared_dir, "54-admin.Events-dom0-stream.json"
        )
        replay = Replay({raw: stream_bytes})
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [replay]):
            stream = port.events()
            try:
                events = [
                    await asyncio.wait_for(anext(stream), GUARD)
                    for _ in range(12)
                ]
            finally:
                await stream.aclose()

        assert replay.requests[0] == raw
        assert [e.name for e in events] == [
            CONNECTION_ESTABLISHED,
            "domain-feature-pre-set:capture-event-feature",
            "domain-feature-set:capture-event-feature",
            "domain-tag-add:capture-event-tag",
            "property-pre-set:label",
            "property-reset:icon",
            "property-set:label",
            "domain-add",
            "domain-tag-add:created-by-dom0",
            "domain-create-on-disk",
            "domain-pre-delete",
            "domain-delete",
        ]
        assert events[6] == Event(
            "db",
            "property-set:label",
            {"name": "label", "newvalue": "orange", "oldvalue": "red"},
        )
        assert events[11] == Event(None, "domain-delete", {"vm": "capture-ev"})


async def _endless(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.read()
    writer.write(b"0\x00")
    while True:
        writer.write(b"x" * 65536)
        await writer.drain()


async def _silent(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.read()
    await asyncio.Event().wait()


def _answer(reply: bytes) -> Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()
        writer.write(reply)
        await writer.drain()

    return handler


class TestBounds:
    async def test_endless_reply_is_cut_off(self, tmp_path: Path) -> None:
        """If qubesd sends a reply without end, the read stops at the cap
        with BadReply, a DaemonUnavailable."""
        port = _port(tmp_path, reply_max=256 * 1024)

        async with FakeQubesd(port.socket_path, [_endless]):
            with pytest.raises(BadReply) as caught:
                await asyncio.wait_for(port.list_qubes(), GUARD)

        assert caught.value.code == "qubesd_bad_reply"
        assert isinstance(caught.value, DaemonUnavailable)

    async def test_silent_qubesd_hits_the_deadline(
        self, tmp_path: Path
    ) -> None:
        """If qubesd never answers, the call fails at its deadline."""
        port = _port(tmp_path, call_timeout=0.05)

        async with FakeQubesd(port.socket_path, [_silent]):
            with pytest.raises(DaemonUnavailable) as caught:
                await asyncio.wait_for(port.get_tags("work"), GUARD)

        assert caught.value.code == "qubesd_unavailable"
        assert "did not answer" in caught.value.message

    async def test_no_socket_is_daemon_unavailable(
        self, tmp_path: Path
    ) -> None:
        """If nothing listens, DaemonUnavailable says it cannot connect."""
        port = _port(tmp_path)

        with pytest.raises(DaemonUnavailable) as caught:
            await port.list_qubes()

        assert "cannot connect" in caught.value.message

    @pytest.mark.parametrize(
        ("reply", "error"),
        [
            pytest.param(b"", DaemonUnavailable, id="empty"),
            pytest.param(b"3\x00x", BadReply, id="unknown-type"),
            pytest.param(b"1\x00\x00x\x00\x00", BadReply, id="event-as-reply"),
            pytest.param(b"2\x00Cls\x00\x00msg", BadReply, id="error-no-nul"),
            pytest.param(
                b"2\x00Cls\x00\x00m\x00arg\x00", BadReply, id="error-args"
            ),
            pytest.param(
                b"2\x00a b\x00\x00msg\x00", BadReply, id="error-bad-class"
            ),
            pytest.param(
                b"2\x00Cls\x00\x00\xff\x00", BadReply, id="error-not-utf8"
            ),
            pytest.param(b"0\x00work\n\xff\n", BadReply, id="list-not-utf8"),
            pytest.param(b"0\x00a b\n", BadReply, id="list-bad-tag"),
            pytest.param(b"0\x00tag", BadReply, id="list-no-newline"),
        ],
    )
    async def test_malformed_reply_is_refused(
        self, tmp_path: Path, reply: bytes, error: type[Exception]
    ) -> None:
        """If qubesd's reply breaks the protocol, the call fails cleanly."""
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [_answer(reply)]):
            with pytest.raises(error) as caught:
                await port.get_tags("work")

        assert isinstance(caught.value, DaemonUnavailable)

    async def test_unknown_qubesd_class_keeps_its_name(
        self, tmp_path: Path
    ) -> None:
        """If qubesd names a class nexusd does not know, the base error
        carries the name and the message."""
        port = _port(tmp_path)
        reply = b"2\x00QubesMemoryError\x00\x00out of memory\x00"

        async with FakeQubesd(port.socket_path, [_answer(reply)]):
            with pytest.raises(QubesError) as caught:
                await port.start("work")

        assert type(caught.value) is QubesError
        assert caught.value.qubesd_class == "QubesMemoryError"
        assert caught.value.message == "out of memory"


CONNECTED = b"1\x00\x00connection-established\x00\x00"


def _stream(*messages: bytes, hold: bool = True) -> Handler:
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
        port = _port(tmp_path)
        handlers = [_stream(CONNECTED, bad, hold=False), _stream(CONNECTED)]

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
        port = _port(tmp_path, call_timeout=0.05)
        handlers = [_stream(CONNECTED, b"1\x00work\x00dom"), _stream(CONNECTED)]

        async with FakeQubesd(port.socket_path, handlers) as server:
            events = await _events(port, 2)

        assert [e.name for e in events] == [CONNECTION_ESTABLISHED] * 2
        assert server.connections == 2

    async def test_missing_marker_is_supplied(self, tmp_path: Path) -> None:
        """If a stream does not open with connection-established, the
        marker is yielded before its first event."""
        port = _port(tmp_path)
        first = b"1\x00work\x00domain-start\x00start_guid\x00True\x00\x00"

        async with FakeQubesd(port.socket_path, [_stream(first)]):
            events = await _events(port, 2)

        assert events == [
            Event(None, CONNECTION_ESTABLISHED, {}),
            Event("work", "domain-start", {"start_guid": "True"}),
        ]

    async def test_quiet_stream_is_not_dropped(self, tmp_path: Path) -> None:
        """If qubesd sends nothing for longer than the message deadline,
        the stream stays open (no deadline between messages)."""
        port = _port(tmp_path, call_timeout=0.02)
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
    return _answer(b"0\x00" + line)


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
        port = _port(tmp_path)

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
        port = _port(tmp_path)
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
        port = _port(tmp_path)

        async with FakeQubesd(port.socket_path, [_ImportSink()]) as server:
            with pytest.raises(InvalidValue):
                await port.import_volume("work", "private", -1, _many(b"", 0))

        assert server.connections == 0
