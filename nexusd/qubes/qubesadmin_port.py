# SPDX-License-Identifier: MIT
"""The Admin API port on the ``qubesadmin`` library, as nexusd runs in dom0.

The library is blocking, so every call runs in a small thread pool. Its
application object is ``QubesLocal`` (``qubesadmin.Qubes()`` would pick the
qrexec client outside a real dom0) with caching off, and its reply parser
is replaced by nexusd's strict one: errors keep qubesd's class name, which
qubesadmin folds into ``QubesException`` for server-only classes such as
``QubesVMAlreadyExistsError``, and come out as :mod:`nexusd.qubes.errors`.
Events use qubesadmin's ``EventsDispatcher`` reader, one connection at a
time, with a ``handle`` that does no blocking lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import qubesadmin
import qubesadmin.app
import qubesadmin.config
import qubesadmin.events
import qubesadmin.exc
import structlog

from nexusd.qubes._threads import feed_pipe, import_data, run_service
from nexusd.qubes.errors import (
    DaemonUnavailable,
    FeatureNotFound,
    InvalidValue,
    NotRunning,
    QubesError,
    error_from_qubesd,
)
from nexusd.qubes.events import Backoff, follow_events
from nexusd.qubes.port import Event, PropertyValue, QubeInfo
from nexusd.qubes.wire import (
    check_arg,
    check_dest,
    check_service,
    create_call,
    encode_value,
    parse_event,
    parse_names,
    parse_property,
    parse_reply,
    parse_vm_list,
    parse_volume_info,
)

__all__ = ["QubesadminPort"]

log = structlog.get_logger()

T = TypeVar("T")

#: Deadline of an ordinary call, in seconds.
CALL_TIMEOUT = 30.0
#: Deadline of start and shutdown (qubesd waits for the qube).
POWER_TIMEOUT = 180.0
#: Threads running blocking library calls.
WORKERS = 4
#: Events waiting for the consumer before the stream is dropped (a
#: reconnect and a reconcile follow, so nothing is lost for good).
EVENT_BACKLOG = 1000
_DOM0 = "dom0"


# qubesadmin has no type stubs, so its base class is Any to mypy.
class _App(qubesadmin.app.QubesLocal):  # type: ignore[misc]
    """``QubesLocal`` whose replies go through nexusd's strict parser."""

    @staticmethod
    def _parse_qubesd_response(response_data: bytes) -> bytes:
        return parse_reply(untrusted_reply=response_data)


# No type stubs here either: the base class is Any to mypy.
class _Dispatcher(qubesadmin.events.EventsDispatcher):  # type: ignore[misc]
    """qubesadmin's reader, its events handed on as the strings they were.

    The stock ``handle`` turns subjects into ``QubesVM`` objects and looks
    devices up with blocking qubesd calls on the event loop; this one only
    drops the library's VM list where qubesadmin's own dispatcher would,
    and passes the raw text to *sink*.
    """

    def __init__(
        self,
        app: Any,
        sink: Callable[[str | None, str, dict[str, str]], None],
    ) -> None:
        super().__init__(app, enable_cache=False)
        self._sink = sink

    def handle(
        self, subject_name: str | None, event: str, **kwargs: str
    ) -> None:
        """Pass one event to the sink; never calls qubesd."""
        if event in _LIST_CHANGES:
            self.app.domains.clear_cache()
        self._sink(subject_name, event, kwargs)


#: Events after which qubesadmin's dispatcher drops its cached VM list.
_LIST_CHANGES = frozenset(
    {
        "connection-established",
        "domain-add",
        "domain-delete",
        "property-set:name",
    }
)


def _translate(err: Exception) -> Exception:
    """Map what the library raised onto nexusd's errors."""
    if isinstance(err, QubesError):
        return err
    if isinstance(err, qubesadmin.exc.QubesException):
        return error_from_qubesd(type(err).__name__, str(err))
    if isinstance(err, OSError):
        return DaemonUnavailable(f"cannot reach qubesd: {err}")
    if isinstance(err, ValueError):
        return InvalidValue(str(err))
    return err


class QubesadminPort:
    """Admin API calls through ``qubesadmin``.

    Args:
        socket_path: qubesd's socket, written to
            ``qubesadmin.config.QUBESD_SOCKET``.
        services_dir: where ``/etc/qubes-rpc`` is (volume import runs the
            ``admin.vm.volume.ImportWithSize`` script found there).
        call_timeout: deadline of one ordinary call, in seconds.
        power_timeout: deadline of start and shutdown calls.
        backoff: waits between reconnections of :meth:`events`.
    """

    def __init__(
        self,
        socket_path: Path | str = "/var/run/qubesd.sock",
        *,
        services_dir: Path | str | None = None,
        call_timeout: float = CALL_TIMEOUT,
        power_timeout: float = POWER_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        """Point the library at *socket_path*; nothing is opened yet."""
        # XXX: path is global; one per process; accepted because one qubesd
        # (qubesadmin reads config.QUBESD_SOCKET at every call).
        qubesadmin.config.QUBESD_SOCKET = str(socket_path)
        if services_dir is not None:
            qubesadmin.config.QREXEC_SERVICES_DIR = str(services_dir)
        self.socket_path = Path(socket_path)
        self.call_timeout = call_timeout
        self.power_timeout = power_timeout
        self.backoff = backoff or Backoff()
        self._app = _App()
        self._app.cache_enabled = False
        self._pool = ThreadPoolExecutor(WORKERS, "qubesadmin")

    async def _run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
    ) -> T:
        """Run a blocking library call in the pool, with a deadline.

        XXX: late calls hold a thread; pool shrinks; accepted because rare:
        qubesd in dom0 answers or dies, and a dead socket fails at once.
        """
        loop = asyncio.get_running_loop()
        deadline = self.call_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, functools.partial(fn, *args)),
                deadline,
            )
        except TimeoutError:
            msg = f"qubesd did not answer within {deadline:g} s"
            raise DaemonUnavailable(msg) from None
        except Exception as err:
            translated = _translate(err)
            if translated is err:
                raise
            raise translated from None

    def _vm(self, qube: str) -> Any:
        return self._app.domains.get_blind(check_dest(qube))

    def _call(
        self, dest: str, method: str, arg: str | None, payload: bytes | None
    ) -> bytes:
        result: bytes = self._app.qubesd_call(dest, method, arg, payload)
        return result

    async def close(self) -> None:
        """Let the pool's threads end once their calls return."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def list_qubes(self) -> dict[str, QubeInfo]:
        """Every qube from one ``admin.vm.List`` (no VMCollection cache)."""
        untrusted_text = await self._run(
            self._call, _DOM0, "admin.vm.List", None, None
        )
        return parse_vm_list(untrusted_text=untrusted_text)

    async def get_tags(self, qube: str) -> frozenset[str]:
        """The tags of *qube*."""
        untrusted_text = await self._run(
            self._call, check_dest(qube), "admin.vm.tag.List", None, None
        )
        return frozenset(
            parse_names(untrusted_text=untrusted_text, what="tag list")
        )

    async def add_tag(self, qube: str, tag: str) -> None:
        """Add *tag* to *qube*."""
        await self._run(self._vm(qube).tags.add, check_arg("tag", tag))

    async def remove_tag(self, qube: str, tag: str) -> None:
        """Remove *tag*; ``TagNotFound`` if absent."""
        await self._run(self._vm(qube).tags.remove, check_arg("tag", tag))

    async def get_feature(self, qube: str, name: str) -> str | None:
        """The feature's value, or ``None`` when it is not set."""
        features = self._vm(qube).features
        try:
            value: str = await self._run(
                features.__getitem__, check_arg("feature", name)
            )
        except FeatureNotFound:
            return None
        return value

    async def set_feature(self, qube: str, name: str, value: str) -> None:
        """Set a feature; qubesd takes printable ASCII only."""
        encode_value("feature value", value)
        features = self._vm(qube).features
        await self._run(features.__setitem__, check_arg("feature", name), value)

    async def remove_feature(self, qube: str, name: str) -> None:
        """Remove a feature; ``FeatureNotFound`` if not set."""
        features = self._vm(qube).features
        await self._run(features.__delitem__, check_arg("feature", name))

    async def list_features(self, qube: str) -> dict[str, str]:
        """Every feature of *qube* itself: one List, then one Get each."""
        untrusted_text = await self._run(
            self._call, check_dest(qube), "admin.vm.feature.List", None, None
        )
        features: dict[str, str] = {}
        for name in parse_names(
            untrusted_text=untrusted_text, what="feature list"
        ):
            value = await self.get_feature(qube, name)
            if value is not None:
                features[name] = value
        return features

    async def get_property(self, qube: str, name: str) -> PropertyValue:
        """One property, default flag and type from one ``Get``."""
        untrusted_text = await self._run(
            self._call,
            check_dest(qube),
            "admin.vm.property.Get",
            check_arg("property", name),
            None,
        )
        return parse_property(untrusted_text=untrusted_text)

    async def set_property(self, qube: str, name: str, value: str) -> None:
        """Set a property from its text form."""
        await self._run(
            self._call,
            check_dest(qube),
            "admin.vm.property.Set",
            check_arg("property", name),
            encode_value("property value", value),
        )

    async def reset_property(self, qube: str, name: str) -> None:
        """Reset a property to its default."""
        await self._run(
            self._call,
            check_dest(qube),
            "admin.vm.property.Reset",
            check_arg("property", name),
            None,
        )

    async def get_global_property(self, name: str) -> PropertyValue:
        """One global property."""
        untrusted_text = await self._run(
            self._call,
            _DOM0,
            "admin.property.Get",
            check_arg("property", name),
            None,
        )
        return parse_property(untrusted_text=untrusted_text)

    async def set_global_property(self, name: str, value: str) -> None:
        """Set a global property from its text form."""
        await self._run(
            self._call,
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
        """Create a qube with ``app.add_new_vm``."""
        create_call(klass, name, label, template, pool)
        await self._run(
            functools.partial(
                self._app.add_new_vm,
                klass,
                name,
                label,
                template=template,
                pool=pool,
            )
        )

    async def remove_qube(self, name: str) -> None:
        """Remove a halted qube (``del app.domains[name]``)."""
        await self._run(self._app.domains.__delitem__, check_dest(name))

    async def start(self, name: str) -> None:
        """Start a qube; qubesd answers once it is up."""
        await self._run(self._vm(name).start, timeout=self.power_timeout)

    async def shutdown(
        self, name: str, force: bool = False, wait: bool = False
    ) -> None:
        """Shut a qube down, optionally forced and waiting for the end."""
        await self._run(
            functools.partial(self._vm(name).shutdown, force=force, wait=wait),
            timeout=self.power_timeout,
        )

    async def kill(self, name: str) -> None:
        """Kill a qube at once."""
        await self._run(self._vm(name).kill)

    async def list_volumes(self, qube: str) -> list[str]:
        """Names of the qube's volumes."""
        untrusted_text = await self._run(
            self._call, check_dest(qube), "admin.vm.volume.List", None, None
        )
        return parse_names(untrusted_text=untrusted_text, what="volume list")

    async def volume_info(self, qube: str, volume: str) -> dict[str, str]:
        """``admin.vm.volume.Info`` as a dict."""
        untrusted_text = await self._run(
            self._call,
            check_dest(qube),
            "admin.vm.volume.Info",
            check_arg("volume", volume),
            None,
        )
        return parse_volume_info(untrusted_text=untrusted_text)

    async def import_volume(
        self,
        qube: str,
        volume: str,
        size: int,
        chunks: AsyncIterator[bytes],
    ) -> None:
        """Stream *size* bytes into a volume with ``import_data_with_size``.

        The library reads a file: it gets the read end of a pipe, and the
        chunks go into the write end as they come, so the pipe's buffer is
        all that is held. At most ``size + 1`` bytes are written, so that a
        longer stream fails the import instead of being cut to fit.
        """
        if size < 0:
            msg = f"volume size must not be negative, got {size}"
            raise InvalidValue(msg)
        vm = self._vm(qube)
        check_arg("volume", volume)
        read_fd, write_fd = os.pipe()
        loop = asyncio.get_running_loop()
        with open(read_fd, "rb") as stream:
            importing = loop.run_in_executor(
                self._pool, import_data, vm, volume, stream, size
            )
            sent = await feed_pipe(loop, write_fd, chunks, size, importing)
            try:
                await importing
            except Exception as err:
                translated = _translate(err)
                if translated is err:
                    raise
                raise translated from None
        if sent != size:
            msg = f"import had {sent} bytes for a size of {size}"
            raise InvalidValue(msg)
        log.info("qube_volume_imported", qube=qube, volume=volume, size=size)

    async def call_service(
        self,
        qube: str,
        service_and_arg: str,
        payload: bytes,
        timeout: float,
    ) -> bytes:
        """Call a service in a running qube with ``run_service``.

        ``autostart=False``: a halted qube is refused, never started. The
        output is read with a cap (``run_service_for_stdio`` would keep
        all of it) and the call is killed at *timeout*.

        Returns:
            The service's output, untrusted: it comes from the guest.
        """
        check_service(service_and_arg)
        vm = self._vm(qube)
        if not await self._run(vm.is_running):
            msg = f"qube {qube!r} is not running; not starting it"
            raise NotRunning(msg)
        return await self._run(
            run_service,
            vm,
            service_and_arg,
            payload,
            timeout,
            timeout=timeout + self.call_timeout,
        )

    async def _events_once(self) -> AsyncGenerator[Event, None]:
        """One admin.Events connection through ``EventsDispatcher``."""
        queue: asyncio.Queue[Event] = asyncio.Queue(EVENT_BACKLOG)
        overflow = False

        def sink(
            subject: str | None, event: str, kwargs: dict[str, str]
        ) -> None:
            nonlocal overflow
            fields = [(subject or "").encode(), event.encode()]
            for key, value in kwargs.items():
                fields += [key.encode(), value.encode()]
            try:
                queue.put_nowait(parse_event(untrusted_fields=fields))
            except asyncio.QueueFull:
                overflow = True
                dispatcher.stop()
            except QubesError:
                log.warning("qubesd_event_dropped", event_length=len(event))

        dispatcher = _Dispatcher(self._app, sink)
        listener = asyncio.create_task(
            dispatcher.listen_for_events(reconnect=False)
        )
        getter: asyncio.Future[Event] | None = None
        try:
            first = True
            while not (listener.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait(
                    {getter, listener},
                    timeout=self.call_timeout if first else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if first and not getter.done() and not listener.done():
                    msg = "qubesd sent nothing on a new events stream"
                    raise DaemonUnavailable(msg)
                first = False
                if not getter.done():
                    getter.cancel()
                    getter = None
                    continue
                event = getter.result()
                getter = None
                yield event
            if overflow:
                msg = f"over {EVENT_BACKLOG} events waiting; reconnecting"
                raise DaemonUnavailable(msg)
            err = listener.exception()
            if err is not None:
                msg = f"events stream failed: {type(err).__name__}"
                raise DaemonUnavailable(msg)
        finally:
            if getter is not None:
                getter.cancel()
            dispatcher.stop()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    def events(self) -> AsyncIterator[Event]:
        """Follow ``admin.Events`` forever; see :func:`follow_events`."""
        return follow_events(self._events_once, self.backoff)
