# SPDX-License-Identifier: MIT
"""nexusd's D-Bus service: the method table, who may call what, signals.

Each call arrives on the bus thread and is handed to the event loop at
once; it is answered when its work is done, within a deadline, and long
operations answer with a job id instead. Methods that change things are
allowed to root and the group ``qubes`` only: the bus policy says so, and
nexusd checks again in case a bus configuration lets more through.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from nexusd.changes import Change
from nexusd.dbus import ADMIN_GROUP, BUS_NAME, bus_address, introspection_xml
from nexusd.dbus.bus import BusServer, Caller, Invocation
from nexusd.dbus.jobs import (
    Job,
    JobContext,
    JobManager,
    find_operation,
    image_from_fd,
)
from nexusd.dbus.methods import AdminMethods
from nexusd.dbus.variants import record, records
from nexusd.errors import (
    BadArgument,
    Busy,
    Denied,
    NexusError,
    ShuttingDown,
    UnknownService,
)

__all__ = ["DbusService", "authorize"]

log = structlog.get_logger()

#: A call not answered by then fails, well before D-Bus's 25 s timeout.
CALL_DEADLINE = 20.0
#: How long stopping waits for calls in progress to be answered.
STOP_GRACE = 5.0
STOP_POLL = 0.01
#: Calls in progress at once; more are refused as busy.
MAX_INFLIGHT = 64
#: Options of a job: at most this many keys, each at most KEY_MAX long.
MAX_OPTIONS = 32
KEY_MAX = 64

Handler = Callable[[Invocation], Awaitable[Any]]


@dataclass(frozen=True)
class _Method:
    handler: Handler
    #: Reply type as a tuple signature; "()" for none.
    signature: str
    #: Whether the method changes something (root or group qubes only).
    changes: bool


def _in_admin_group(caller: Caller) -> bool:
    try:
        gid = grp.getgrnam(ADMIN_GROUP).gr_gid
    except KeyError:
        return False
    if caller.gids is not None:
        return gid in caller.gids
    if caller.uid is None:
        return False
    try:
        user = pwd.getpwuid(caller.uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def authorize(caller: Caller, method: str) -> None:
    """Let root and members of ``qubes`` through.

    Raises:
        Denied: anyone else.
    """
    if caller.uid == 0 or _in_admin_group(caller):
        return
    msg = f"only root and the group {ADMIN_GROUP} may call {method}"
    raise Denied(msg)


def _parse_options(*, untrusted_options: object) -> dict[str, Any]:
    if not isinstance(untrusted_options, dict):
        msg = "options must be a dictionary"
        raise BadArgument(msg)
    if len(untrusted_options) > MAX_OPTIONS:
        msg = f"at most {MAX_OPTIONS} options"
        raise BadArgument(msg)
    for key in untrusted_options:
        if not (
            isinstance(key, str)
            and 0 < len(key) <= KEY_MAX
            and key.isascii()
            and key.replace("_", "a").replace("-", "a").isalnum()
        ):
            msg = f"option names are 1 to {KEY_MAX} of [A-Za-z0-9_-]"
            raise BadArgument(msg)
    return dict(untrusted_options)


class DbusService:
    """The ``org.tesseraqt.Nexus1`` object of a running daemon."""

    def __init__(self, daemon: Any) -> None:
        """Serve *daemon* (its store, registry, links, feed, operations)."""
        self._daemon = daemon
        self.methods = AdminMethods(daemon)
        self.jobs = JobManager(self._job_progress, self._job_finished)
        self._server: BusServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._table = self._method_table()

    def _method_table(self) -> dict[str, _Method]:
        rows: list[tuple[str, Handler, str, bool]] = [
            ("Status", self._status, "(a{sv})", False),
            ("ListQubes", self._list_qubes, "(aa{sv})", False),
            ("ListContainers", self._list_containers, "(aa{sv})", False),
            ("ListLinks", self._list_links, "(aa{sv})", False),
            ("RemoveContainer", self._remove_container, "(a{sv})", True),
            ("RemoveLink", self._remove_link, "(a{sv})", True),
            ("ExplainPolicy", self._explain, "(a{sv})", False),
            ("CheckPolicy", self._check, "(aa{sv})", False),
            ("AuditLog", self._audit_log, "(aa{sv})", False),
            ("ImportTemplate", self._import_template, "(s)", True),
            ("CreateQube", self._job("CreateQube"), "(s)", True),
            ("Apply", self._job("Apply"), "(s)", True),
            ("Diff", self._job("Diff"), "(s)", False),
            ("AuditQubes", self._job("AuditQubes"), "(s)", False),
            ("ListJobs", self._list_jobs, "(aa{sv})", False),
            ("GetJob", self._get_job, "(a{sv})", False),
            ("CancelJob", self._cancel_job, "()", True),
        ]
        return {name: _Method(h, sig, ch) for name, h, sig, ch in rows}

    async def start(self) -> None:
        """Connect to the bus (``NEXUS_DBUS_ADDRESS`` or the system bus),
        publish the object, own the name, subscribe to changes.

        Raises:
            RuntimeError: the bus is unreachable or the name is refused.
        """
        self._loop = asyncio.get_running_loop()
        address = bus_address()
        server = BusServer(address, introspection_xml(), self._dispatch)
        await asyncio.to_thread(server.start)
        self._server = server
        self._daemon.feed.subscribe(self._on_change)
        log.info(
            "dbus_started",
            name=BUS_NAME,
            bus=address or "system",
            unique_name=server.unique_name,
        )

    async def stop(self) -> None:
        """Cancel jobs, unsubscribe, leave the bus."""
        if self._server is None:
            return
        with self._lock:
            self._stopping = True
        self._daemon.feed.unsubscribe(self._on_change)
        # Calls already handed over are answered before the bus goes; the
        # counter (not a task set) also covers those not yet started.
        deadline = time.monotonic() + STOP_GRACE
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(STOP_POLL)
        await self.jobs.close()
        server, self._server = self._server, None
        await asyncio.to_thread(server.stop)
        log.info("dbus_stopped")

    def _dispatch(self, call: Invocation) -> None:
        # On the bus thread: never block here.
        loop = self._loop
        err: NexusError | None = None
        with self._lock:
            if self._stopping or loop is None:
                err = ShuttingDown("nexusd is stopping")
            elif self._inflight >= MAX_INFLIGHT:
                err = Busy(f"{MAX_INFLIGHT} calls are in progress; try again")
            else:
                self._inflight += 1
        if err is None and loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._serve(call), loop)
            except RuntimeError:
                with self._lock:
                    self._inflight -= 1
                err = ShuttingDown("nexusd is stopping")
            else:
                return
        _close_fds(call)
        if err is not None:
            call.fail(err.code, err.message)

    async def _serve(self, call: Invocation) -> None:
        started = time.monotonic()
        outcome = "ok"
        try:
            spec = self._table.get(call.method)
            if spec is None:
                msg = f"no method {call.method[:64]!r}"
                raise UnknownService(msg)
            if spec.changes:
                authorize(call.caller, call.method)
            async with asyncio.timeout(CALL_DEADLINE):
                value = await spec.handler(call)
            call.reply(
                spec.signature, () if spec.signature == "()" else (value,)
            )
        except NexusError as err:
            outcome = err.code
            call.fail(err.code, err.message)
        except TimeoutError:
            outcome = "timeout"
            call.fail("unavailable", "nexusd did not finish the call in time")
        except Exception:
            log.exception("dbus_call_crashed", method=call.method)
            outcome = "internal_error"
            call.fail("internal_error", "internal error; see nexusd's journal")
        finally:
            _close_fds(call)
            with self._lock:
                self._inflight -= 1
        level = log.info if outcome == "ok" else log.warning
        level(
            "dbus_call_served",
            method=call.method[:64],
            actor=call.caller.actor,
            pid=call.caller.pid,
            outcome=outcome,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _status(self, call: Invocation) -> Any:
        status = await self.methods.status(len(self.jobs.running()))
        return record(status)

    async def _list_qubes(self, call: Invocation) -> Any:
        return records(await self.methods.list_qubes())

    async def _list_containers(self, call: Invocation) -> Any:
        (untrusted_qube,) = call.untrusted_args
        found = await self.methods.list_containers(
            untrusted_qube=untrusted_qube
        )
        return records(found)

    async def _list_links(self, call: Invocation) -> Any:
        return records(await self.methods.list_links())

    async def _remove_container(self, call: Invocation) -> Any:
        untrusted_qube, untrusted_name = call.untrusted_args
        done = await self.methods.remove_container(
            call.caller.actor,
            untrusted_qube=untrusted_qube,
            untrusted_name=untrusted_name,
        )
        return record(done)

    async def _remove_link(self, call: Invocation) -> Any:
        (untrusted_id,) = call.untrusted_args
        done = await self.methods.remove_link(
            call.caller.actor, untrusted_id=untrusted_id
        )
        return record(done)

    async def _explain(self, call: Invocation) -> Any:
        untrusted_source, untrusted_target, untrusted_service = (
            call.untrusted_args
        )
        found = await self.methods.explain_policy(
            untrusted_source=untrusted_source,
            untrusted_target=untrusted_target,
            untrusted_service=untrusted_service,
        )
        return record(found)

    async def _check(self, call: Invocation) -> Any:
        return records(await self.methods.check_policy())

    async def _audit_log(self, call: Invocation) -> Any:
        untrusted_qube, untrusted_limit = call.untrusted_args
        found = await self.methods.audit_log(
            untrusted_qube=untrusted_qube, untrusted_limit=untrusted_limit
        )
        return records(found)

    def _job(self, name: str) -> Handler:
        async def start_job(call: Invocation) -> Any:
            (untrusted_options,) = call.untrusted_args
            options = _parse_options(untrusted_options=untrusted_options)
            operation = find_operation(self._daemon, name)
            context = JobContext(
                job_id="",
                untrusted_options=options,
                actor=call.caller.actor,
                via=f"dbus:{name}",
            )
            return self.jobs.start(name, operation, context).id

        return start_job

    async def _import_template(self, call: Invocation) -> Any:
        untrusted_options, untrusted_index = call.untrusted_args
        options = _parse_options(untrusted_options=untrusted_options)
        if not isinstance(
            untrusted_index, int
        ) or not 0 <= untrusted_index < len(call.fds):
            msg = "the image must be passed as a file descriptor"
            raise BadArgument(msg)
        operation = find_operation(self._daemon, "ImportTemplate")
        fd = call.fds.pop(untrusted_index)
        context = JobContext(
            job_id="",
            untrusted_options=options,
            actor=call.caller.actor,
            via="dbus:ImportTemplate",
            image=image_from_fd(fd),
        )
        return self.jobs.start("ImportTemplate", operation, context).id

    async def _list_jobs(self, call: Invocation) -> Any:
        return records([job.as_dict() for job in self.jobs.list()])

    async def _get_job(self, call: Invocation) -> Any:
        (untrusted_id,) = call.untrusted_args
        if not isinstance(untrusted_id, str):
            msg = "job id must be a string"
            raise BadArgument(msg)
        return record(self.jobs.get(untrusted_id).as_dict())

    async def _cancel_job(self, call: Invocation) -> Any:
        (untrusted_id,) = call.untrusted_args
        if not isinstance(untrusted_id, str):
            msg = "job id must be a string"
            raise BadArgument(msg)
        job = self.jobs.cancel(untrusted_id)
        log.info("job_cancel_requested", job=job.id, actor=call.caller.actor)

    def _emit(
        self, signal: str, signature: str, values: tuple[Any, ...]
    ) -> None:
        server = self._server
        if server is None:
            return
        server.emit(signal, signature, values)

    def _on_change(self, change: Change) -> None:
        if change.kind == "container":
            if change.action == "removed":
                self._emit(
                    "ContainerRemoved", "(ss)", (change.qube, change.name)
                )
                return
            signal = (
                "ContainerAdded"
                if change.action == "added"
                else "ContainerChanged"
            )
            self._emit(
                signal,
                "(ssa{sv})",
                (change.qube, change.name, record(change.data)),
            )
        elif change.kind == "link":
            signal = "LinkAdded" if change.action == "added" else "LinkRemoved"
            self._emit(signal, "(sa{sv})", (change.name, record(change.data)))

    def _job_progress(self, job: Job) -> None:
        self._emit("JobProgress", "(sds)", (job.id, job.fraction, job.message))

    def _job_finished(self, job: Job) -> None:
        self._emit(
            "JobFinished",
            "(ssa{sv}ss)",
            (
                job.id,
                job.state,
                record(job.result),
                job.error_code,
                job.error_message,
            ),
        )


def _close_fds(call: Invocation) -> None:
    fds, call.fds = call.fds, []
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            log.warning("descriptor_close_failed", method=call.method[:64])
