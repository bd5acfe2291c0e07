# SPDX-License-Identifier: MIT
"""The Admin API port over qubesd's own socket protocol, without qubesadmin.

One connection per call, as qubesadmin does: header, payload, half-close,
then a reply read to EOF with a size cap and a deadline. It talks to the
simulated qubesd of ``nexus-sim`` and could talk to ``/var/run/qubesd.sock``;
only :meth:`SocketPort.call_service` needs the simulated dom0 (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import structlog

from nexusd.qubes._sim_service import call_sim_service
from nexusd.qubes.errors import (
    DaemonUnavailable,
    FeatureNotFound,
    InvalidValue,
    NotRunning,
    ServiceCallFailed,
)
from nexusd.qubes.events import Backoff, follow_events
from nexusd.qubes.port import Event, PropertyValue, QubeInfo
from nexusd.qubes.wire import (
    CHUNK,
    EVENT_MAX,
    REPLY_MAX,
    build_request,
    check_arg,
    create_call,
    decode_text,
    encode_value,
    parse_names,
    parse_property,
    parse_reply,
    parse_vm_list,
    parse_volume_info,
    read_bounded,
    read_event,
)

__all__ = ["SocketPort"]

log = structlog.get_logger()

#: Deadline of an ordinary call, in seconds.
CALL_TIMEOUT = 30.0
#: Deadline of calls that wait for a qube (start waits for its qrexec
#: agent, qrexec_timeout defaults to 60 s; shutdown with wait).
POWER_TIMEOUT = 180.0
#: Import chunks are written through a buffer no larger than this.
_WRITE_HIGH_WATER = 256 * 1024
_DOM0 = "dom0"


class SocketPort:
    """Admin API calls over a qubesd-protocol Unix socket.

    Args:
        socket_path: qubesd's socket (``/var/run/qubesd.sock``, or the
            simulated dom0's ``ROOT/qubesd.sock``).
        sim_root: root of the simulated dom0, for :meth:`call_service`.
        call_timeout: deadline of one ordinary call, in seconds.
        power_timeout: deadline of start and shutdown calls.
        reply_max: largest reply accepted, in bytes.
        event_max: largest event message accepted, in bytes.
        backoff: waits between reconnections of :meth:`events`.
    """

    def __init__(
        self,
        socket_path: Path | str,
        *,
        sim_root: Path | None = None,
        call_timeout: float = CALL_TIMEOUT,
        power_timeout: float = POWER_TIMEOUT,
        reply_max: int = REPLY_MAX,
        event_max: int = EVENT_MAX,
        backoff: Backoff | None = None,
    ) -> None:
        """Remember where qubesd listens; nothing is opened yet."""
        self.socket_path = Path(socket_path)
        self.sim_root = sim_root
        self.call_timeout = call_timeout
        self.power_timeout = power_timeout
        self.reply_max = reply_max
        self.event_max = event_max
        self.backoff = backoff or Backoff()

    async def _open(
        self, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(
                self.socket_path, limit=limit
            )
        except OSError as err:
            msg = f"cannot connect to qubesd: {err.strerror or err}"
            raise DaemonUnavailable(msg) from None

    async def call(
        self,
        dest: str,
        method: str,
        arg: str = "",
        payload: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Make one Admin API call and return the value of its reply.

        Raises:
            InvalidValue: a malformed method, argument or destination.
            DaemonUnavailable: no connection, no reply in time, reply too big.
            QubesError: qubesd's error, mapped by its class name.
        """
        request = build_request(method, dest, arg, payload)
        deadline = self.call_timeout if timeout is None else timeout
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(deadline):
                reader, writer = await self._open(CHUNK)
                writer.write(request)
                await writer.drain()
                writer.write_eof()
                untrusted_reply = await read_bounded(reader, self.reply_max)
        except TimeoutError:
            msg = f"qubesd did not answer {method} within {deadline:g} s"
            raise DaemonUnavailable(msg) from None
        except OSError as err:
            msg = f"connection to qubesd failed during {method}: {err}"
            raise DaemonUnavailable(msg) from None
        finally:
            if writer is not None:
                writer.close()
        return parse_reply(untrusted_reply=untrusted_reply)

    async def close(self) -> None:
        """Nothing is held between calls."""

    async def list_qubes(self) -> dict[str, QubeInfo]:
        """Every qube, by name, from one ``admin.vm.List``."""
        untrusted_text = await self.call(_DOM0, "admin.vm.List")
        return parse_vm_list(untrusted_text=untrusted_text)

    async def get_tags(self, qube: str) -> frozenset[str]:
        """The tags of *qube*."""
        untrusted_text = await self.call(qube, "admin.vm.tag.List")
        return frozenset(
            parse_names(untrusted_text=untrusted_text, what="tag list")
        )

    async def add_tag(self, qube: str, tag: str) -> None:
        """Add *tag* to *qube*."""
        await self.call(qube, "admin.vm.tag.Set", check_arg("tag", tag))

    async def remove_tag(self, qube: str, tag: str) -> None:
        """Remove *tag*; ``TagNotFound`` if absent."""
        await self.call(qube, "admin.vm.tag.Remove", check_arg("tag", tag))

    async def get_feature(self, qube: str, name: str) -> str | None:
        """The feature's value, or ``None`` when it is not set."""
        try:
            untrusted_value = await self.call(
                qube, "admin.vm.feature.Get", check_arg("feature", name)
            )
        except FeatureNotFound:
            return None
        return decode_text(untrusted_value=untrusted_value, what="a feature")

    async def set_feature(self, qube: str, name: str, value: str) -> None:
        """Set a feature; qubesd takes printable ASCII only."""
        await self.call(
            qube,
            "admin.vm.feature.Set",
            check_arg("feature", name),
            encode_value("feature value", value),
        )

    async def remove_feature(self, qube: str, name: str) -> None:
        """Remove a feature; ``FeatureNotFound`` if not set."""
        await self.call(
            qube, "admin.vm.feature.Remove", check_arg("feature", name)
        )

    async def list_features(self, qube: str) -> dict[str, str]:
        """Every feature of *qube* itself: one List, then one Get each.

        A feature removed between the two calls is left out.
        """
        untrusted_text = await self.call(qube, "admin.vm.feature.List")
        names = parse_names(untrusted_text=untrusted_text, what="feature list")
        features: dict[str, str] = {}
        for name in names:
            value = await self.get_feature(qube, name)
            if value is not None:
                features[name] = value
        return features

    async def get_property(self, qube: str, name: str) -> PropertyValue:
        """One property of *qube*."""
        untrusted_text = await self.call(
            qube, "admin.vm.property.Get", check_arg("property", name)
        )
        return parse_property(untrusted_text=untrusted_text)

    async def set_property(self, qube: str, name: str, value: str) -> None:
        """Set a property from its text form."""
        await self.call(
            qube,
            "admin.vm.property.Set",
            check_arg("property", name),
            encode_value("property value", value),
        )

    async def reset_property(self, qube: str, name: str) -> None:
        """Reset a property to its default."""
        await self.call(
            qube, "admin.vm.property.Reset", check_arg("property", name)
        )

    async def get_global_property(self, name: str) -> PropertyValue:
        """One global property."""
        untrusted_text = await self.call(
            _DOM0, "admin.property.Get", check_arg("property", name)
        )
        return parse_property(untrusted_text=untrusted_text)

    async def set_global_property(self, name: str, value: str) -> None:
        """Set a global property from its text form."""
        await self.call(
            _DOM0,
            "admin.property.Set",
            check_arg("property", name),
            encode_value("property value", value),
        )

    async def create_qube(
        self,
        klass: str,
        name: str,
        label: str,
        template: str | None = None,
        pool: str | None = None,
    ) -> None:
        """Create a qube with ``admin.vm.Create.K`` or ``CreateInPool.K``."""
        method, arg, payload = create_call(klass, name, label, template, pool)
        await self.call(_DOM0, method, arg, payload)

    async def remove_qube(self, name: str) -> None:
        """Remove a halted qube."""
        await self.call(name, "admin.vm.Remove")

    async def start(self, name: str) -> None:
        """Start a qube; qubesd answers once it is up."""
        await self.call(name, "admin.vm.Start", timeout=self.power_timeout)

    async def shutdown(
        self, name: str, force: bool = False, wait: bool = False
    ) -> None:
        """Shut a qube down, optionally forced and waiting for the end."""
        arg = "+".join(w for w, on in (("force", force), ("wait", wait)) if on)
        await self.call(
            name, "admin.vm.Shutdown", arg, timeout=self.power_timeout
        )

    async def kill(self, name: str) -> None:
        """Kill a qube at once."""
        await self.call(name, "admin.vm.Kill")

    async def list_volumes(self, qube: str) -> list[str]:
        """Names of the qube's volumes."""
        untrusted_text = await self.call(qube, "admin.vm.volume.List")
        return parse_names(untrusted_text=untrusted_text, what="volume list")

    async def volume_info(self, qube: str, volume: str) -> dict[str, str]:
        """``admin.vm.volume.Info``: its ``key=value`` lines as a dict."""
        untrusted_text = await self.call(
            qube, "admin.vm.volume.Info", check_arg("volume", volume)
        )
        return parse_volume_info(untrusted_text=untrusted_text)

    async def import_volume(
        self,
        qube: str,
        volume: str,
        size: int,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Stream *size* bytes into a volume (``ImportWithSize``).

        Chunks are written as they come, with flow control; none is kept.
        If *chunks* yields fewer or more bytes than *size*, qubesd fails
        the import (at most one byte past *size* is sent so that it does)
        and the error is raised.
        """
        if size < 0:
            msg = f"volume size must not be negative, got {size}"
            raise InvalidValue(msg)
        request = build_request(
            "admin.vm.volume.ImportWithSize",
            qube,
            check_arg("volume", volume),
            f"{size}\n".encode("ascii"),
        )
        sent = 0
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.call_timeout):
                reader, writer = await self._open(CHUNK)
                writer.transport.set_write_buffer_limits(_WRITE_HIGH_WATER)
                writer.write(request)
                await writer.drain()
            sent = await self._send_chunks(writer, chunks, size)
            # qubesd syncs the image before it answers.
            async with asyncio.timeout(self.power_timeout):
                untrusted_reply = await read_bounded(reader, self.reply_max)
        except TimeoutError:
            msg = f"qubesd stalled importing {volume} of {qube!r}"
            raise DaemonUnavailable(msg) from None
        except OSError as err:
            msg = f"connection to qubesd failed during an import: {err}"
            raise DaemonUnavailable(msg) from None
        finally:
            if writer is not None:
                writer.close()
        parse_reply(untrusted_reply=untrusted_reply)
        if sent != size:
            msg = f"import had {sent} bytes for a size of {size}"
            raise InvalidValue(msg)
        log.info("qube_volume_imported", qube=qube, volume=volume, size=size)

    async def _send_chunks(
        self,
        writer: asyncio.StreamWriter,
        chunks: AsyncIterator[bytes],
        size: int,
    ) -> int:
        """Write *chunks*, at most ``size + 1`` bytes, then EOF.

        A byte past *size* makes qubesd fail the import rather than take a
        truncated view of a longer stream. If qubesd hangs up first (it
        refused the import), writing stops and its reply says why.
        """
        sent = 0
        try:
            async for chunk in chunks:
                part = chunk[: size + 1 - sent]
                writer.write(part)
                sent += len(part)
                async with asyncio.timeout(self.call_timeout):
                    await writer.drain()
                if sent > size:
                    break
            writer.write_eof()
        except (BrokenPipeError, ConnectionResetError):
            log.warning("volume_import_cut", sent=sent, size=size)
        return sent

    async def call_service(
        self,
        qube: str,
        service_and_arg: str,
        payload: bytes,
        timeout: float,
    ) -> bytes:
        """Call a service in a simulated guest (the sim's qrexec stand-in).

        The socket is ``SimLayout(sim_root).vm_rpc_dir(qube)/SERVICE+ARG``,
        else ``.../SERVICE``; it gets qrexec's in-VM header
        ``SERVICE+ARG dom0\\0``, the payload and EOF. A qube that is not
        running is refused with ``NotRunning``: as with qubesadmin's
        ``autostart=False``, nexusd never starts a guest to tell it
        something.

        Raises:
            NotRunning: the qube is not running.
            ServiceCallFailed: no such service, no answer within *timeout*,
                or more than ``SERVICE_REPLY_MAX`` bytes of output.

        Returns:
            The service's output, untrusted: it comes from the guest.
        """
        if self.sim_root is None:
            msg = "SocketPort.call_service needs the simulated dom0's root"
            raise ServiceCallFailed(msg)
        listed = parse_vm_list(
            untrusted_text=await self.call(qube, "admin.vm.List")
        )
        info = listed.get(qube)
        if info is None or info.power_state != "Running":
            msg = f"qube {qube!r} is not running; not starting it"
            raise NotRunning(msg)
        return await call_sim_service(
            self.sim_root, qube, service_and_arg, payload, timeout
        )

    async def _events_once(self) -> AsyncGenerator[Event, None]:
        request = build_request("admin.Events", _DOM0)
        writer: asyncio.StreamWriter | None = None
        try:
            # qubesd sends connection-established at once: a stream that
            # stays silent from the start is not qubesd serving events.
            async with asyncio.timeout(self.call_timeout):
                reader, writer = await self._open(self.event_max)
                writer.write(request)
                await writer.drain()
                writer.write_eof()
                first = await read_event(
                    reader,
                    message_timeout=self.call_timeout,
                    limit=self.event_max,
                )
            if first is None:
                return
            yield first
            while True:
                event = await read_event(
                    reader,
                    message_timeout=self.call_timeout,
                    limit=self.event_max,
                )
                if event is None:
                    return
                yield event
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def events(self) -> AsyncIterator[Event]:
        """Follow ``admin.Events`` forever; see :func:`follow_events`."""
        return follow_events(self._events_once, self.backoff)
