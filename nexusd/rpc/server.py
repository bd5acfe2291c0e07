# SPDX-License-Identifier: MIT
"""Serve nexusd's qrexec socket services: one connection, one call, one reply.

Fixed order per call: read the header (bounded, with a deadline), parse it,
take a slot (per source and global), read the payload to EOF (bounded, with
a deadline), dispatch, write exactly one JSON reply, close. Every call ends
in one ``call_finished`` log line; payloads appear there only as length and
hash.

Each connection is an :class:`asyncio.Protocol` that takes the bytes as the
loop delivers them and starts a task only for the handler: a call costs a
few callbacks and timer handles, not the reader, writer and awaits of a
stream per step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import structlog

from nexusd.errors import (
    BadArgument,
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

#: After the reply, input still arriving is dropped up to these bounds.
_LINGER_BYTES = 65536
_LINGER_SECONDS = 1.0
#: Connections lingering at once, in all. A caller still sending after its
#: answer, beyond this many, gets its answer and an immediate close: on
#: Linux the reply stays readable ahead of the reset, and no flood of such
#: calls holds more descriptors than the limits allow.
_LINGER_MAX = 64


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
        self._open: set[_Connection] = set()
        self._lingering = 0
        self._server: asyncio.Server | None = None
        self._closing = False
        self.calls = 0

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._open)

    async def start(self, sock: Any) -> None:
        """Start serving on the listening Unix socket *sock*."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _Connection(self), sock=sock
        )

    async def close(self) -> None:
        """Stop accepting, let calls finish within the grace, then cut."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        pending = {conn.finished: conn for conn in self._open}
        if pending:
            _, late = await asyncio.wait(
                pending, timeout=self._limits.shutdown_grace
            )
            for future in late:
                pending[future].cut()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            await self._server.wait_closed()

    def _take_slot(self, source: str) -> None:
        if self._per_source[source] >= self._limits.calls_per_source:
            msg = "too many calls in flight from this qube"
            raise Busy(msg)
        if self._in_flight >= self._limits.calls_total:
            msg = "too many calls in flight"
            raise Busy(msg)
        self._per_source[source] += 1
        self._in_flight += 1

    def _give_slot(self, source: str) -> None:
        self._in_flight -= 1
        self._per_source[source] -= 1
        if not self._per_source[source]:
            del self._per_source[source]


#: The phases of a connection, in order.
_HEADER, _PAYLOAD, _HANDLER, _LINGER, _CLOSED = range(5)


class _Connection(asyncio.Protocol):
    """One call: its bytes, deadlines, slot, handler and reply."""

    def __init__(self, server: RpcServer) -> None:
        self._server = server
        self._limits = server._limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._phase = _HEADER
        self._untrusted_buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._spec: ServiceSpec | None = None
        self._header: CallHeader | None = None
        self._slot: str | None = None
        self._task: asyncio.Task[bytes] | None = None
        self._peer_done = False
        self._lost = False
        self._dropped = 0
        self._started = time.monotonic()
        self._fields: dict[str, Any] = {}
        self._outcome = ""
        self.finished: asyncio.Future[None] = self._loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection; start the header's deadline."""
        self._transport = cast(asyncio.Transport, transport)
        self._server._open.add(self)
        if self._server._closing:
            self._fail(ShuttingDown("nexusd is stopping"))
            return
        self._timer = self._loop.call_later(
            self._limits.header_timeout, self._header_late
        )

    def data_received(self, data: bytes) -> None:
        """Take the caller's bytes in the phase they belong to."""
        untrusted_data = data
        if self._phase == _HEADER:
            self._header_data(untrusted_data)
        elif self._phase == _PAYLOAD:
            self._payload_data(untrusted_data)
        elif self._phase == _LINGER:
            self._dropped += len(untrusted_data)
            if self._dropped >= _LINGER_BYTES:
                self._close()
        # While the handler runs the caller has closed its side already;
        # nothing can arrive.

    def eof_received(self) -> bool:
        """The caller closed its side: the payload is complete."""
        self._peer_done = True
        if self._phase == _HEADER:
            self._fields["header_len"] = len(self._untrusted_buf)
            msg = "connection closed before the service descriptor"
            self._fail(BadHeader(msg))
        elif self._phase == _PAYLOAD:
            self._dispatch()
        elif self._phase == _LINGER:
            self._close()
        # Keep the transport open: the reply still has to go out.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone, by us or by the caller."""
        del exc
        self._lost = True
        self._peer_done = True
        if self._phase in (_HEADER, _PAYLOAD):
            # Reset by the caller before its call was complete: nobody is
            # left to answer.
            code = BadHeader.code if self._phase == _HEADER else BadPayload.code
            self._outcome = self._outcome or code
            self._fields["connection"] = "lost"
            self._cancel_timer()
            self._release()
            self._phase = _CLOSED
        elif self._phase == _LINGER:
            self._cancel_timer()
            self._end_linger()
            self._phase = _CLOSED
        self._maybe_finished()

    # Phases

    def _header_data(self, untrusted_data: bytes) -> None:
        room = HEADER_MAX - len(self._untrusted_buf)
        end = untrusted_data.find(b"\0", 0, room)
        if end < 0:
            self._untrusted_buf += untrusted_data[:room]
            if len(self._untrusted_buf) >= HEADER_MAX:
                self._fields["header_len"] = len(self._untrusted_buf)
                self._fields["header_sha256"] = _digest(
                    bytes(self._untrusted_buf)
                )
                msg = f"no NUL within {HEADER_MAX} bytes"
                self._fail(BadHeader(msg))
            return
        self._untrusted_buf += untrusted_data[:end]
        untrusted_header = bytes(self._untrusted_buf)
        self._untrusted_buf = bytearray()
        self._cancel_timer()
        try:
            self._accept(untrusted_header)
        except NexusError as err:
            self._fail(err)
            return
        del untrusted_header
        self._phase = _PAYLOAD
        self._timer = self._loop.call_later(
            self._limits.payload_timeout, self._payload_late
        )
        self._payload_data(untrusted_data[end + 1 :])
        if self._phase == _PAYLOAD and self._peer_done:
            self._dispatch()

    def _accept(self, untrusted_header: bytes) -> None:
        """Parse the descriptor, check it against its service, take a slot.

        Raises:
            NexusError: the descriptor or the call is refused.
        """
        header = parse_header(
            untrusted_header=untrusted_header, services=self._server._services
        )
        self._fields.update(
            source=header.source,
            service=header.service,
            arg=header.argument,
            target=header.target,
        )
        spec = self._server._services[header.service]
        if spec.takes_arg != bool(header.argument):
            if spec.takes_arg:
                msg = f"{header.service} needs an argument"
            else:
                msg = f"{header.service} takes no argument"
            raise BadArgument(msg)

        self._server._take_slot(header.source)
        self._slot = header.source
        self._header, self._spec = header, spec

    def _payload_data(self, untrusted_data: bytes) -> None:
        spec = self._spec
        if spec is None or not untrusted_data:
            return
        limit = spec.max_payload if spec.takes_payload else 0
        room = limit + 1 - len(self._untrusted_buf)
        self._untrusted_buf += untrusted_data[:room]
        if len(self._untrusted_buf) > limit:
            self._fields["payload_len"] = f">{limit}"
            if not spec.takes_payload:
                msg = f"{spec.name} takes no payload"
                self._fail(BadPayload(msg))
            else:
                msg = f"payload longer than {limit} bytes"
                self._fail(PayloadTooLarge(msg))

    def _dispatch(self) -> None:
        spec, header = self._spec, self._header
        if spec is None or header is None:
            return
        self._cancel_timer()
        untrusted_payload = bytes(self._untrusted_buf)
        self._untrusted_buf = bytearray()
        self._fields["payload_len"] = len(untrusted_payload)
        if untrusted_payload:
            self._fields["payload_sha256"] = _digest(untrusted_payload)
        self._phase = _HANDLER
        self._task = self._loop.create_task(
            self._run(spec, header, untrusted_payload)
        )
        self._task.add_done_callback(self._handled)

    async def _run(
        self, spec: ServiceSpec, header: CallHeader, untrusted_payload: bytes
    ) -> bytes:
        try:
            result = await spec.handler(Call(header, untrusted_payload))
        except NexusError as err:
            return self._refusal(err)
        except asyncio.CancelledError:
            return self._refusal(ShuttingDown("nexusd is stopping"))
        except Exception:
            log.exception("call_crashed", **self._fields)
            return self._refusal(InternalError("internal error"))
        self._outcome = "ok"
        return encode_reply(result)

    def _handled(self, task: asyncio.Task[bytes]) -> None:
        self._task = None
        self._release()
        if task.cancelled():
            # Cancelled before its first step: the handler never ran.
            reply = self._refusal(ShuttingDown("nexusd is stopping"))
        elif task.exception() is not None:
            reply = self._refusal(InternalError("internal error"))
        else:
            reply = task.result()
        self._reply(reply)

    def _header_late(self) -> None:
        self._timer = None
        self._fields["header_len"] = len(self._untrusted_buf)
        timeout = self._limits.header_timeout
        msg = f"service descriptor not received within {timeout:g} s"
        self._fail(RequestTimeout(msg))

    def _payload_late(self) -> None:
        self._timer = None
        self._fields["payload_len"] = len(self._untrusted_buf)
        timeout = self._limits.payload_timeout
        msg = f"payload not closed within {timeout:g} s"
        self._fail(RequestTimeout(msg))

    # Endings

    def _refusal(self, err: NexusError) -> bytes:
        self._outcome = err.code
        return encode_reply(error=err)

    def _fail(self, err: NexusError) -> None:
        """Answer with *err* before the handler ran."""
        self._cancel_timer()
        self._release()
        self._untrusted_buf = bytearray()
        self._reply(self._refusal(err))

    def _reply(self, reply: bytes) -> None:
        """Write the one reply, half-close, then linger before closing.

        Closing a Unix socket with unread input resets the connection, and
        the peer may then lose the reply; so input that still arrives is
        read and dropped, bounded by ``_LINGER_BYTES`` and
        ``_LINGER_SECONDS``.
        """
        self._server.calls += 1
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            self._phase = _CLOSED
            self._maybe_finished()
            return
        try:
            transport.write(reply)
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            self._close()
            return
        if self._peer_done:
            self._close()
            return
        if self._server._lingering >= _LINGER_MAX:
            self._close()
            return
        self._server._lingering += 1
        self._phase = _LINGER
        self._timer = self._loop.call_later(_LINGER_SECONDS, self._close)

    def _end_linger(self) -> None:
        if self._phase == _LINGER:
            self._server._lingering -= 1

    def _close(self) -> None:
        self._cancel_timer()
        self._end_linger()
        self._phase = _CLOSED
        if self._transport is not None:
            self._transport.close()
        self._maybe_finished()

    def cut(self) -> None:
        """Shutdown after the grace: end this call now, as nexusd stops."""
        if self._task is not None:
            self._task.cancel()
        elif self._phase in (_HEADER, _PAYLOAD):
            self._fail(ShuttingDown("nexusd is stopping"))
        elif self._phase == _LINGER:
            self._close()

    def _release(self) -> None:
        if self._slot is not None:
            self._server._give_slot(self._slot)
            self._slot = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _maybe_finished(self) -> None:
        """Log the call once its reply is out and its connection is done."""
        if self._phase != _CLOSED or self._task is not None:
            return
        if self.finished.done():
            return
        self.finished.set_result(None)
        self._server._open.discard(self)
        fields = self._fields
        fields["outcome"] = self._outcome or RequestTimeout.code
        fields["duration_ms"] = round(
            (time.monotonic() - self._started) * 1000, 3
        )
        if self._outcome == "ok":
            log.info("call_finished", **fields)
        else:
            log.warning("call_finished", **fields)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
