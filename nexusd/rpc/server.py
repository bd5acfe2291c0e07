# SPDX-License-Identifier: MIT
"""Serve nexusd's qrexec socket services: one connection, one call, one reply.

Fixed order per call: read the header (bounded, with a deadline), parse it,
take a slot (per source and global), read the payload to EOF (bounded, with
a deadline), dispatch, write exactly one JSON reply, close. Every call ends
in one ``call_finished`` log line; payloads appear there only as length and
hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from nexusd.errors import (
    BadHeader,
    BadPayload,
    Busy,
    InternalError,
    NexusError,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
)
from nexusd.rpc.header import HEADER_MAX, CallHeader, parse_header

__all__ = ["Call", "RpcLimits", "RpcServer", "ServiceSpec", "encode_reply"]

log = structlog.get_logger()

_READ_CHUNK = 4096
#: After the reply, input still arriving is dropped up to these bounds.
_LINGER_BYTES = 65536
_LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class Call:
    """One parsed call, handed to a service handler.

    ``untrusted_payload`` is the raw payload; the handler parses it.
    """

    header: CallHeader
    untrusted_payload: bytes


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class ServiceSpec:
    """What a service accepts; the server enforces it before the handler."""

    name: str
    handler: Handler
    takes_arg: bool
    takes_payload: bool
    max_payload: int


@dataclass(frozen=True)
class RpcLimits:
    """Deadlines and bounds of the server."""

    header_timeout: float
    payload_timeout: float
    calls_per_source: int
    calls_total: int
    shutdown_grace: float


def encode_reply(result: Any = None, error: NexusError | None = None) -> bytes:
    """Return the one JSON line that answers a call."""
    if error is not None:
        body: dict[str, Any] = {"ok": False, "error": error.to_wire()}
    else:
        body = {"ok": True, "result": result}
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return text.encode("utf-8") + b"\n"


class RpcServer:
    """The qrexec socket-service server of all nexus.* services."""

    def __init__(
        self, services: Mapping[str, ServiceSpec], limits: RpcLimits
    ) -> None:
        """Serve *services* (by name) under *limits*."""
        self._services = dict(services)
        self._limits = limits
        self._per_source: Counter[str] = Counter()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self.calls = 0

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    async def start(self, sock: Any) -> None:
        """Start serving on the listening Unix socket *sock*."""
        self._server = await asyncio.start_unix_server(
            self._accept, sock=sock, limit=HEADER_MAX
        )

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        """Stop accepting, let calls finish within the grace, then cut."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(
                pending, timeout=self._limits.shutdown_grace
            )
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        started = time.monotonic()
        fields: dict[str, Any] = {}
        reply: bytes
        try:
            result = await self._handle(reader, fields)
        except NexusError as err:
            reply = encode_reply(error=err)
            fields["outcome"] = err.code
        except asyncio.CancelledError:
            reply = encode_reply(error=ShuttingDown("nexusd is stopping"))
            fields["outcome"] = ShuttingDown.code
        except Exception:
            log.exception("call_crashed", **fields)
            reply = encode_reply(error=InternalError("internal error"))
            fields["outcome"] = InternalError.code
        else:
            reply = encode_reply(result)
            fields["outcome"] = "ok"
        self.calls += 1
        await _send_and_close(reader, writer, reply)
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        if fields["outcome"] == "ok":
            log.info("call_finished", **fields)
        else:
            log.warning("call_finished", **fields)

    async def _handle(
        self, reader: asyncio.StreamReader, fields: dict[str, Any]
    ) -> Any:
        if self._closing:
            raise ShuttingDown("nexusd is stopping")
        untrusted_header, untrusted_head = await _read_header(
            reader, self._limits.header_timeout, fields
        )
        header = parse_header(
            untrusted_header=untrusted_header, services=self._services
        )
        del untrusted_header
        fields.update(
            source=header.source,
            service=header.service,
            arg=header.argument,
            target=header.target,
        )
        spec = self._services[header.service]
        if spec.takes_arg != bool(header.argument):
            word = "expects" if spec.takes_arg else "takes no"
            msg = f"{header.service} {word} an argument"
            raise BadHeader(msg)

        if self._per_source[header.source] >= self._limits.calls_per_source:
            msg = "too many calls in flight from this qube"
            raise Busy(msg)
        if self._in_flight >= self._limits.calls_total:
            msg = "too many calls in flight"
            raise Busy(msg)
        self._per_source[header.source] += 1
        self._in_flight += 1
        try:
            untrusted_payload = await _read_payload(
                reader,
                spec,
                untrusted_head,
                self._limits.payload_timeout,
                fields,
            )
            return await spec.handler(Call(header, untrusted_payload))
        finally:
            self._in_flight -= 1
            self._per_source[header.source] -= 1
            if not self._per_source[header.source]:
                del self._per_source[header.source]


async def _read_header(
    reader: asyncio.StreamReader, timeout: float, fields: dict[str, Any]
) -> tuple[bytes, bytes]:
    """Return the descriptor without its NUL, and the bytes read after it."""
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(HEADER_MAX - len(buf))
                if not chunk:
                    fields["header_len"] = len(buf)
                    msg = "connection closed before the service descriptor"
                    raise BadHeader(msg)
                end = chunk.find(b"\0")
                if end >= 0:
                    buf += chunk[:end]
                    return bytes(buf), chunk[end + 1 :]
                buf += chunk
                if len(buf) >= HEADER_MAX:
                    fields["header_len"] = len(buf)
                    fields["header_sha256"] = _digest(bytes(buf))
                    msg = f"no NUL within {HEADER_MAX} bytes"
                    raise BadHeader(msg)
    except TimeoutError:
        fields["header_len"] = len(buf)
        msg = f"service descriptor not received within {timeout:g} s"
        raise RequestTimeout(msg) from None


async def _read_payload(
    reader: asyncio.StreamReader,
    spec: ServiceSpec,
    head: bytes,
    timeout: float,
    fields: dict[str, Any],
) -> bytes:
    limit = spec.max_payload if spec.takes_payload else 0
    buf = bytearray()
    chunk = head
    try:
        async with asyncio.timeout(timeout):
            while True:
                if not chunk:
                    chunk = await reader.read(_READ_CHUNK)
                    if not chunk:
                        break
                buf += chunk
                chunk = b""
                if len(buf) > limit:
                    fields["payload_len"] = f">{limit}"
                    if not spec.takes_payload:
                        msg = f"{spec.name} takes no payload"
                        raise BadPayload(msg)
                    msg = f"payload longer than {limit} bytes"
                    raise PayloadTooLarge(msg)
    except TimeoutError:
        fields["payload_len"] = len(buf)
        msg = f"payload not closed within {timeout:g} s"
        raise RequestTimeout(msg) from None
    payload = bytes(buf)
    fields["payload_len"] = len(payload)
    if payload:
        fields["payload_sha256"] = _digest(payload)
    return payload


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def _send_and_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes
) -> None:
    """Write the reply, half-close, then linger before closing.

    Closing a Unix socket with unread input resets the connection, and the
    peer may then lose the reply; so input that still arrives is read and
    dropped, bounded by ``_LINGER_BYTES`` and ``_LINGER_SECONDS``.
    """
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        writer.write(reply)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_SECONDS):
            await writer.drain()
            dropped = 0
            while dropped < _LINGER_BYTES:
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    break
                dropped += len(chunk)
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
