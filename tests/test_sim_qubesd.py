# SPDX-License-Identifier: MIT
"""The simulated qubesd socket: transcripts byte for byte, hostile framing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from pathlib import Path

import pytest

from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import build_capture_machine
from nexusd.sim.model import Dom0Model
from nexusd.sim.qubesd import MAX_REQUEST, QubesdServer, serve_qubesd

#: Guard against a hang; never an assertion on speed.
GUARD = 10
#: Offline-only differences documented in the transcripts' README.
RANDOM_UUID_FILE = "44-admin.vm.List-capture-new.json"
OFFLINE_START_FILE = "51-admin.vm.Start-work-offline.json"
EVENTS_FILE = "54-admin.Events-dom0-stream.json"
CONNECTED = b"1\x00\x00connection-established\x00\x00"
#: The calls file 54's note says were made while the stream was open.
EVENTS_CALLS = (
    b"admin.vm.feature.Set+capture-event-feature dom0 name db\x00on",
    b"admin.vm.tag.Set+capture-event-tag dom0 name db\x00",
    b"admin.vm.property.Set+label dom0 name db\x00orange",
    b"admin.vm.Create.AppVM+nixos-25.05 dom0 name dom0\x00"
    b"name=capture-ev label=yellow",
    b"admin.vm.Remove+ dom0 name capture-ev\x00",
)


async def exchange(path: Path, raw: bytes, *, eof: bool = True) -> bytes:
    """Write *raw*, half-close (unless told not to), read to EOF."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(raw)
        await writer.drain()
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


def transcripts(shared_dir: Path) -> list[dict]:
    folder = shared_dir / "fixtures" / "qubesd-transcripts"
    records = []
    for path in sorted(folder.glob("[0-9]*.json")):
        record = json.loads(path.read_text())
        record["file"] = path.name
        records.append(record)
    return records


@pytest.fixture
async def capture(tmp_path: Path):
    layout = SimLayout(tmp_path)
    model = build_capture_machine(layout)
    server = await serve_qubesd(model, layout.qubesd_socket)
    yield model, layout.qubesd_socket
    await server.close()


class TestTranscripts:
    async def test_every_capture_replays_byte_for_byte(
        self, capture, shared_dir: Path
    ) -> None:
        """If the captured calls are replayed in order, each reply equals the
        real qubesd's bytes (44: up to the random UUID; 51: Start succeeds)."""
        model, path = capture
        mismatches = []
        for record in transcripts(shared_dir):
            if record["file"] == EVENTS_FILE:
                continue
            raw = base64.b64decode(record["raw_request_b64"])
            expected = base64.b64decode(record["response_b64"])
            got = await exchange(path, raw)
            if record["file"] == RANDOM_UUID_FILE:
                new_uuid = model.domains["capture-new"].get("uuid")
                expected = re.sub(
                    rb"uuid=[0-9a-f-]{36}",
                    b"uuid=" + new_uuid.encode(),
                    expected,
                )
            if record["file"] == OFFLINE_START_FILE:
                expected = b"0\x00"
            if got != expected:
                mismatches.append((record["file"], expected, got))

        assert mismatches == []

    async def test_events_stream_matches_capture(
        self, capture, shared_dir: Path
    ) -> None:
        """If the five calls of file 54 are made while a dom0 events stream is
        open, the stream carries exactly the captured bytes, in order."""
        _, path = capture
        record = json.loads(
            (
                shared_dir / "fixtures" / "qubesd-transcripts" / EVENTS_FILE
            ).read_text()
        )
        expected = base64.b64decode(record["response_b64"])
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(base64.b64decode(record["raw_request_b64"]))
        writer.write_eof()
        first = await asyncio.wait_for(reader.readuntil(b"\x00\x00"), GUARD)

        for raw in EVENTS_CALLS:
            assert (await exchange(path, raw)).startswith(b"0\x00")
        rest = await asyncio.wait_for(
            reader.readexactly(len(expected) - len(first)), GUARD
        )
        writer.close()

        assert first + rest == expected

    async def test_start_then_state_is_running(self, capture) -> None:
        """If a halted qube is started (the sim's deviation from the offline
        capture), CurrentState reports Running."""
        _, path = capture

        reply = await exchange(path, b"admin.vm.Start+ dom0 name work\x00")
        state = await exchange(
            path, b"admin.vm.CurrentState+ dom0 name work\x00"
        )

        assert reply == b"0\x00"
        assert state.endswith(b"power_state=Running")


class TestFraming:
    async def test_no_nul_gets_zero_bytes(self, capture) -> None:
        """If the request has no NUL, the connection is aborted silently."""
        _, path = capture

        assert await exchange(path, b"admin.vm.List+ dom0 name dom0") == b""

    async def test_request_over_64k_gets_zero_bytes(self, capture) -> None:
        """If the header alone is over 64 KiB, qubesd's cap aborts it."""
        _, path = capture
        raw = (
            b"admin.vm.List+"
            + b"a" * (MAX_REQUEST + 1)
            + b" dom0 name dom0\x00"
        )

        with contextlib.suppress(ConnectionError):
            assert await exchange(path, raw) == b""

    async def test_request_of_exactly_64k_is_read(self, capture) -> None:
        """If the request is exactly 64 KiB, it is parsed (here: a payload
        the method refuses), not cut off."""
        _, path = capture
        header = b"admin.vm.List+ dom0 name dom0\x00"
        raw = header + b"x" * (MAX_REQUEST - len(header))

        reply = await exchange(path, raw)

        assert reply == b"2\x00ProtocolError\x00\x00unexpected payload\x00"

    async def test_bad_destination_type_gets_zero_bytes(self, capture) -> None:
        """If the destination type is neither name nor keyword adminvm, the
        connection is aborted."""
        _, path = capture

        assert (
            await exchange(path, b"admin.vm.List+ dom0 keyword default\x00")
            == b""
        )

    async def test_three_fields_get_zero_bytes(self, capture) -> None:
        """If the header has three fields, the connection is aborted."""
        _, path = capture

        assert await exchange(path, b"admin.vm.List+ dom0 dom0\x00") == b""

    async def test_keyword_adminvm_means_dom0(self, capture) -> None:
        """If the destination is ``keyword adminvm``, it is dom0."""
        _, path = capture

        reply = await exchange(
            path, b"admin.label.Index+red dom0 keyword adminvm\x00"
        )

        assert reply == b"0\x001"

    async def test_no_plus_means_empty_argument(self, capture) -> None:
        """If the method has no ``+``, the argument is empty."""
        _, path = capture

        reply = await exchange(path, b"admin.vm.List dom0 name work\x00")

        assert reply.startswith(b"0\x00work class=AppVM")

    async def test_non_ascii_source_gets_zero_bytes(self, capture) -> None:
        """If the source is not ASCII, qubesd's unhandled path aborts."""
        _, path = capture

        assert (
            await exchange(path, b"admin.vm.List+ d\xc3\xb6m0 name dom0\x00")
            == b""
        )

    async def test_bad_uuid_destination_is_refused(self, capture) -> None:
        """If a ``uuid:`` destination is malformed, the reply is
        QubesVMInvalidUUIDError."""
        _, path = capture

        reply = await exchange(path, b"admin.vm.List+ dom0 name uuid:1234\x00")

        assert reply == (
            b"2\x00QubesVMInvalidUUIDError\x00\x00"
            b"VM UUID is not valid: '1234'\x00"
        )

    async def test_uuid_destination_finds_the_qube(self, capture) -> None:
        """If the destination is ``uuid:<uuid>`` of a qube, it is that qube."""
        _, path = capture
        raw = (
            b"admin.vm.List+ dom0 name"
            b" uuid:e8bd7c04-5129-5757-8fcd-3fdc4d63256f\x00"
        )

        assert (await exchange(path, raw)).startswith(b"0\x00work ")

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"admin.vm.List+x dom0 name dom0\x00", b"unexpected argument"),
            (
                b"admin.vm.property.Get+ dom0 name work\x00",
                b"expected an argument",
            ),
            (
                b"admin.label.List+ dom0 name work\x00",
                b"expected destination to be AdminVM",
            ),
            (b"admin.vm.Remove+ dom0 name work\x00x", b"unexpected payload"),
            (
                b"admin.vm.Shutdown+now dom0 name work\x00",
                b"Argument must match: force, wait",
            ),
        ],
    )
    async def test_decorator_checks_answer_protocol_error(
        self, capture, raw: bytes, message: bytes
    ) -> None:
        """If a request breaks a method's declared shape, the reply is
        ProtocolError with qubesd's message and nothing changes."""
        model, path = capture
        before = model.layout.state_file.read_bytes()

        reply = await exchange(path, raw)

        assert reply == b"2\x00ProtocolError\x00\x00" + message + b"\x00"
        assert model.layout.state_file.read_bytes() == before

    async def test_create_param_without_equals_gets_zero_bytes(
        self, capture
    ) -> None:
        """If a Create parameter has no ``=``, qubesd's unhandled ValueError
        path aborts and no qube is created."""
        model, path = capture
        raw = b"admin.vm.Create.AppVM+ dom0 name dom0\x00name=x labelred"

        assert await exchange(path, raw) == b""
        assert "x" not in model.domains

    async def test_held_connection_does_not_block_others(self, capture) -> None:
        """If a client never half-closes, the server keeps waiting for it and
        still answers another client meanwhile."""
        _, path = capture
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"admin.vm.List+ dom0 name dom0\x00")
        await writer.drain()

        other = await exchange(path, b"admin.label.Get+red dom0 name dom0\x00")
        pending = asyncio.ensure_future(reader.read())
        await asyncio.sleep(0)
        held_answered = pending.done()
        writer.write_eof()
        late = await asyncio.wait_for(pending, GUARD)
        writer.close()

        assert other == b"0\x000xcc0000"
        assert held_answered is False
        assert late.startswith(b"0\x00dom0 class=AdminVM")


class TestEvents:
    async def test_stream_starts_with_connection_established(
        self, capture
    ) -> None:
        """If a client opens admin.Events, the first message is the artificial
        connection-established with an empty subject."""
        _, path = capture
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"admin.Events+ dom0 name dom0\x00")
        writer.write_eof()

        first = await asyncio.wait_for(
            reader.readexactly(len(CONNECTED)), GUARD
        )
        writer.close()

        assert first == CONNECTED

    async def test_qube_stream_carries_only_that_qube(self, capture) -> None:
        """If the stream's destination is a qube, events of other qubes and of
        the system are left out."""
        _, path = capture
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"admin.Events+ dom0 name work\x00")
        writer.write_eof()
        await asyncio.wait_for(reader.readexactly(len(CONNECTED)), GUARD)

        await exchange(path, b"admin.vm.tag.Set+t1 dom0 name db\x00")
        await exchange(path, b"admin.vm.tag.Set+t2 dom0 name work\x00")
        message = await asyncio.wait_for(reader.readuntil(b"\x00\x00"), GUARD)
        writer.close()

        assert message == b"1\x00work\x00domain-tag-add:t2\x00tag\x00t2\x00\x00"

    async def test_stream_ends_when_client_goes(self, capture) -> None:
        """If the client closes its events connection, the server stops
        sending to it and drops its subscription."""
        model, path = capture
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"admin.Events+ dom0 name dom0\x00")
        writer.write_eof()
        await asyncio.wait_for(reader.readexactly(len(CONNECTED)), GUARD)
        subscribed = model.subscriber_count

        writer.close()
        await writer.wait_closed()
        for _ in range(GUARD * 10):
            if model.subscriber_count == 0:
                break
            await asyncio.sleep(0.1)

        assert subscribed == 1
        assert model.subscriber_count == 0


class TestServerLifecycle:
    async def test_close_removes_socket_and_ends_streams(
        self, tmp_path: Path
    ) -> None:
        """If the server is closed, its socket file is gone and an open events
        stream ends."""
        layout = SimLayout(tmp_path)
        model = build_capture_machine(layout)
        server = await serve_qubesd(model, layout.qubesd_socket)
        reader, writer = await asyncio.open_unix_connection(
            str(layout.qubesd_socket)
        )
        writer.write(b"admin.Events+ dom0 name dom0\x00")
        writer.write_eof()
        await asyncio.wait_for(reader.readexactly(len(CONNECTED)), GUARD)

        await server.close()
        rest = await asyncio.wait_for(reader.read(), GUARD)
        writer.close()

        assert not layout.qubesd_socket.exists()
        assert rest == b""
        assert model.subscriber_count == 0

    async def test_stale_socket_is_replaced(self, tmp_path: Path) -> None:
        """If a socket file is left over with nobody listening, start()
        replaces it."""
        layout = SimLayout(tmp_path)
        model = Dom0Model(layout)
        first = await serve_qubesd(model, layout.qubesd_socket)
        first._server.close()  # leave the file behind, as a crash would
        await first._server.wait_closed()
        layout.qubesd_socket.touch(exist_ok=True)

        async with QubesdServer(model, layout.qubesd_socket):
            reply = await exchange(
                layout.qubesd_socket,
                b"admin.label.Index+red dom0 name dom0\x00",
            )

        assert reply == b"0\x001"

    async def test_live_socket_is_not_stolen(self, tmp_path: Path) -> None:
        """If another server listens on the path, start() refuses."""
        layout = SimLayout(tmp_path)
        model = Dom0Model(layout)

        async with QubesdServer(model, layout.qubesd_socket):
            with pytest.raises(FileExistsError):
                await serve_qubesd(model, layout.qubesd_socket)
