# SPDX-License-Identifier: MIT
"""Hostile framing against nexusd's qrexec socket: bounded answers, no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest

from tests.harness import FakePort, call, db_rows, start_daemon

DEADLINE = 0.3


@pytest.fixture
async def daemon(tmp_path: Path):
    port = FakePort()
    port.add("work", guest=True)
    daemon = await start_daemon(
        tmp_path,
        port,
        header_timeout=DEADLINE,
        payload_timeout=DEADLINE,
        calls_per_source=2,
    )
    yield daemon
    await daemon.stop()


async def exchange(
    path: Path,
    chunks: list[bytes],
    *,
    delay: float = 0.0,
    eof: bool = True,
) -> bytes:
    """Send *chunks* (with *delay* between), maybe half-close, read all."""
    reader, writer = await asyncio.open_unix_connection(str(path))

    async def send() -> None:
        with contextlib.suppress(OSError):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                if delay:
                    await asyncio.sleep(delay)
            if eof:
                writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return reply


def error_code(reply: bytes) -> str:
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    body = json.loads(reply)
    assert body["ok"] is False
    return body["error"]["code"]


HOSTILE = {
    "no_nul": ([b"nexus.ContainerList+ work name dom0"], {}, "bad_header"),
    "70000_without_nul": ([b"A" * 70000], {}, "bad_header"),
    "three_fields": ([b"nexus.ContainerList+ work name\0"], {}, "bad_header"),
    "non_ascii_source": (
        [b"nexus.ContainerList+ w\xc3\xb6rk name dom0\0"],
        {},
        "bad_header",
    ),
    "header_then_eof_on_create": (
        [b"nexus.ContainerCreate+web work keyword adminvm\0"],
        {},
        "ok",
    ),
    "payload_never_closed": (
        [b"nexus.ContainerCreate+web work keyword adminvm\0{"],
        {"eof": False},
        "timeout",
    ),
    "payload_over_cap": (
        [b"nexus.ContainerCreate+web work keyword adminvm\0", b" " * 5000],
        {},
        "payload_too_large",
    ),
    "one_byte_every_10ms": (
        [bytes([b]) for b in b"nexus.ContainerList+ work name dom0\0"],
        {"delay": 0.01},
        "timeout",
    ),
    "nothing_at_all": ([], {"eof": False}, "timeout"),
}


class TestHostileFraming:
    @pytest.mark.parametrize("case", sorted(HOSTILE))
    async def test_hostile_call_gets_bounded_answer(
        self, daemon, case: str
    ) -> None:
        """If a caller frames a call badly, it gets one error reply."""
        chunks, options, expected = HOSTILE[case]

        reply = await exchange(daemon.config.paths.socket, chunks, **options)

        if expected == "ok":
            assert json.loads(reply)["ok"] is True
        else:
            assert error_code(reply) == expected
            assert db_rows(daemon, "containers") == []

    async def test_hundred_hostile_calls_leak_nothing(self, daemon) -> None:
        """If 100 hostile calls come and go, fds and tasks are as before."""
        await call(daemon, "nexus.ContainerList")
        fds_before = len(os.listdir("/proc/self/fd"))
        tasks_before = len(asyncio.all_tasks())
        cases = [c for c in sorted(HOSTILE) if c != "one_byte_every_10ms"]

        for i in range(100):
            chunks, options, _ = HOSTILE[cases[i % len(cases)]]
            await exchange(daemon.config.paths.socket, chunks, **options)

        await asyncio.sleep(0.05)
        assert daemon.server is not None
        assert daemon.server.connections == 0
        assert len(asyncio.all_tasks()) == tasks_before
        assert len(os.listdir("/proc/self/fd")) == fds_before
        reply = await call(daemon, "nexus.ContainerList")
        assert reply["ok"] is True


class TestLimits:
    async def test_third_concurrent_call_from_one_source_is_busy(
        self, daemon
    ) -> None:
        """If a qube has 2 calls open, its third is refused with busy."""
        path = daemon.config.paths.socket
        header = b"nexus.ContainerCreate+web work keyword adminvm\0"
        held = [await asyncio.open_unix_connection(str(path)) for _ in "ab"]
        for _, writer in held:
            writer.write(header)
            await writer.drain()
        await asyncio.sleep(0.05)

        reply = await exchange(path, [header])

        assert error_code(reply) == "busy"
        for _, writer in held:
            writer.close()

    async def test_other_source_is_served_while_one_floods(
        self, tmp_path: Path
    ) -> None:
        """If one qube holds all its slots, another qube is still served."""
        port = FakePort()
        port.add("work", guest=True)
        port.add("db", guest=True)
        daemon = await start_daemon(
            tmp_path, port, calls_per_source=2, payload_timeout=5
        )
        path = daemon.config.paths.socket
        header = b"nexus.ContainerCreate+web work keyword adminvm\0"
        held = [await asyncio.open_unix_connection(str(path)) for _ in "abcd"]
        for _, writer in held:
            writer.write(header)
            await writer.drain()
        try:
            reply = await call(
                daemon, "nexus.ContainerCreate", "pg", source="db"
            )
        finally:
            for _, writer in held:
                writer.close()
            await daemon.stop()

        assert reply["ok"] is True


class TestShutdown:
    async def test_in_flight_call_is_answered_when_stopping(
        self, tmp_path: Path
    ) -> None:
        """If nexusd stops while a call is in flight, the call still gets
        one reply (finished within the grace, or shutting_down), and new
        connections are refused."""
        port = FakePort()
        port.add("work", guest=True)
        daemon = await start_daemon(
            tmp_path, port, shutdown_grace=0.2, payload_timeout=5
        )
        path = daemon.config.paths.socket
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"nexus.ContainerCreate+web work keyword adminvm\0{")
        await writer.drain()
        await asyncio.sleep(0.05)

        await daemon.stop()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()

        assert error_code(reply) == "shutting_down"
        assert db_rows(daemon, "containers") == []
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(str(path))
