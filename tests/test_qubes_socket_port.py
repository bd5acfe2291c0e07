# SPDX-License-Identifier: MIT
"""SocketPort on the wire: byte-exact requests from the real qubesd's
transcripts, and servers that misbehave (endless, silent, malformed)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

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


def make_port(tmp_path: Path, **kwargs: Any) -> SocketPort:
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
        port = make_port(tmp_path)

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
        port = make_port(tmp_path)

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
        port = make_port(tmp_path)

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
        port = make_port(tmp_path)

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
        port = make_port(tmp_path)

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


def answer(reply: bytes) -> Handler:
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
        port = make_port(tmp_path, reply_max=256 * 1024)

        async with FakeQubesd(port.socket_path, [_endless]):
            with pytest.raises(BadReply) as caught:
                await asyncio.wait_for(port.list_qubes(), GUARD)

        assert caught.value.code == "qubesd_bad_reply"
        assert isinstance(caught.value, DaemonUnavailable)

    async def test_silent_qubesd_hits_the_deadline(
        self, tmp_path: Path
    ) -> None:
        """If qubesd never answers, the call fails at its deadline."""
        port = make_port(tmp_path, call_timeout=0.05)

        async with FakeQubesd(port.socket_path, [_silent]):
            with pytest.raises(DaemonUnavailable) as caught:
                await asyncio.wait_for(port.get_tags("work"), GUARD)

        assert caught.value.code == "qubesd_unavailable"
        assert "did not answer" in caught.value.message

    async def test_no_socket_is_daemon_unavailable(
        self, tmp_path: Path
    ) -> None:
        """If nothing listens, DaemonUnavailable says it cannot connect."""
        port = make_port(tmp_path)

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
        port = make_port(tmp_path)

        async with FakeQubesd(port.socket_path, [answer(reply)]):
            with pytest.raises(error) as caught:
                await port.get_tags("work")

        assert isinstance(caught.value, DaemonUnavailable)

    async def test_unknown_qubesd_class_keeps_its_name(
        self, tmp_path: Path
    ) -> None:
        """If qubesd names a class nexusd does not know, the base error
        carries the name and the message."""
        port = make_port(tmp_path)
        reply = b"2\x00QubesMemoryError\x00\x00out of memory\x00"

        async with FakeQubesd(port.socket_path, [answer(reply)]):
            with pytest.raises(QubesError) as caught:
                await port.start("work")

        assert type(caught.value) is QubesError
        assert caught.value.qubesd_class == "QubesMemoryError"
        assert caught.value.message == "out of memory"
