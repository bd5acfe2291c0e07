# SPDX-License-Identifier: MIT
"""nexusctl's side of the bus: calls to nexusd and waiting for jobs.

The only module of nexusctl that knows pydbus and Gio; the rest sees plain
Python values and :class:`ClientError` with nexusd's stable error codes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexusd.dbus import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH

__all__ = ["ClientError", "JobEnd", "NexusClient", "open_image"]

#: Reply deadline of ordinary calls (nexusd answers within 20 s or fails).
CALL_TIMEOUT_MS = 25_000

#: How often a waiting client asks how its job is, besides the signals.
POLL_INTERVAL_MS = 2000

#: Bus errors that mean nexusd is not there.
_ABSENT = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Disconnected",
)
_TIMEOUT = (
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
)


class ClientError(Exception):
    """A call failed; ``code`` is nexusd's error code (or ``denied``,
    ``unavailable``, ``timeout``, ``dbus_error`` for the bus's own)."""

    def __init__(self, code: str, message: str) -> None:
        """Keep *code* and *message*."""
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class JobEnd:
    """How a job ended."""

    job: str
    state: str
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""
    error_message: str = ""


def _client_error(err: Any) -> ClientError:
    from gi.repository import Gio

    remote = Gio.DBusError.get_remote_error(err) or ""
    message = str(err.message)
    prefix = f"GDBus.Error:{remote}: "
    if remote and message.startswith(prefix):
        message = message[len(prefix) :]
    if remote.startswith(ERROR_PREFIX):
        return ClientError(remote[len(ERROR_PREFIX) :], message)
    if remote == "org.freedesktop.DBus.Error.AccessDenied":
        return ClientError("denied", f"the bus refused the call: {message}")
    if remote in _ABSENT:
        return ClientError("unavailable", "nexusd is not running on this bus")
    if remote in _TIMEOUT:
        return ClientError("timeout", "nexusd did not answer in time")
    return ClientError("dbus_error", message)


class NexusClient:
    """Calls nexusd over the bus at *address* (None: the system bus)."""

    def __init__(self, address: str | None = None) -> None:
        """Connect on first use."""
        self._address = address
        self._bus: Any = None

    def _con(self) -> Any:
        if self._bus is None:
            import pydbus
            from gi.repository import Gio, GLib

            try:
                address = self._address or Gio.dbus_address_get_for_bus_sync(
                    Gio.BusType.SYSTEM
                )
                self._bus = pydbus.connect(address)
            except GLib.Error as err:
                msg = f"cannot reach the bus: {err.message}"
                raise ClientError("unavailable", msg) from err
        return self._bus.con

    def call(
        self,
        method: str,
        signature: str = "()",
        args: tuple[Any, ...] = (),
        *,
        fd: int | None = None,
        timeout_ms: int = CALL_TIMEOUT_MS,
    ) -> Any:
        """Call *method*; return its one out value (None if it has none).

        Raises:
            ClientError: the bus or nexusd refused, failed, or timed out.
        """
        from gi.repository import Gio, GLib

        con = self._con()
        params = GLib.Variant(signature, args) if args else None
        try:
            if fd is None:
                reply = con.call_sync(
                    BUS_NAME,
                    OBJECT_PATH,
                    INTERFACE,
                    method,
                    params,
                    None,
                    Gio.DBusCallFlags.NONE,
                    timeout_ms,
                    None,
                )
            else:
                fds = Gio.UnixFDList.new()
                fds.append(fd)
                reply, _ = con.call_with_unix_fd_list_sync(
                    BUS_NAME,
                    OBJECT_PATH,
                    INTERFACE,
                    method,
                    params,
                    None,
                    Gio.DBusCallFlags.NONE,
                    timeout_ms,
                    fds,
                    None,
                )
        except GLib.Error as err:
            raise _client_error(err) from err
        values = reply.unpack() if reply is not None else ()
        return values[0] if values else None

    def status(self) -> dict[str, Any]:
        """nexusd's status record."""
        return dict(self.call("Status"))

    def qubes(self) -> list[dict[str, Any]]:
        """Every qube nexusd knows of."""
        return list(self.call("ListQubes"))

    def containers(self, qube: str = "") -> list[dict[str, Any]]:
        """Containers of *qube*, or of all."""
        return list(self.call("ListContainers", "(s)", (qube,)))

    def links(self) -> list[dict[str, Any]]:
        """Every link."""
        return list(self.call("ListLinks"))

    def remove_container(self, qube: str, name: str) -> dict[str, Any]:
        """Remove a container and its links."""
        return dict(self.call("RemoveContainer", "(ss)", (qube, name)))

    def remove_link(self, link_id: str) -> dict[str, Any]:
        """Remove a link."""
        return dict(self.call("RemoveLink", "(s)", (link_id,)))

    def explain(
        self, source: str, target: str, service_and_arg: str
    ) -> dict[str, Any]:
        """Explain a policy decision."""
        return dict(
            self.call(
                "ExplainPolicy", "(sss)", (source, target, service_and_arg)
            )
        )

    def check(self) -> list[dict[str, Any]]:
        """Policy problems that affect nexus services."""
        return list(self.call("CheckPolicy"))

    def audit_log(self, qube: str = "", limit: int = 0) -> list[dict[str, Any]]:
        """The newest audit records."""
        return list(self.call("AuditLog", "(su)", (qube, limit)))

    def jobs(self) -> list[dict[str, Any]]:
        """Jobs nexusd remembers."""
        return list(self.call("ListJobs"))

    def cancel_job(self, job: str) -> None:
        """Ask a job to stop."""
        self.call("CancelJob", "(s)", (job,))

    def run_job(
        self,
        method: str,
        options: dict[str, Any],
        *,
        fd: int | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        on_started: Callable[[str], None] | None = None,
    ) -> JobEnd:
        """Start a job and wait for its end, reporting progress.

        Raises:
            ClientError: the job could not be started, or the bus went away.
        """
        from gi.repository import Gio, GLib

        from nexusd.dbus.variants import record

        con = self._con()
        context = GLib.MainContext.new()
        context.push_thread_default()
        seen: list[tuple[str, tuple[Any, ...]]] = []

        def on_signal(*args: Any) -> None:
            name, params = args[4], args[5]
            seen.append((name, tuple(params.unpack())))

        sub = con.signal_subscribe(
            BUS_NAME,
            INTERFACE,
            None,
            OBJECT_PATH,
            None,
            Gio.DBusSignalFlags.NONE,
            on_signal,
        )
        try:
            if fd is None:
                job = self.call(method, "(a{sv})", (record(options),))
            else:
                job = self.call(method, "(a{sv}h)", (record(options), 0), fd=fd)
            if on_started is not None:
                on_started(job)
            return self._wait(context, seen, job, on_progress)
        finally:
            con.signal_unsubscribe(sub)
            context.pop_thread_default()

    def _wait(
        self,
        context: Any,
        seen: list[tuple[str, tuple[Any, ...]]],
        job: str,
        on_progress: Callable[[float, str], None] | None,
    ) -> JobEnd:
        from gi.repository import GLib

        tick = GLib.timeout_source_new(POLL_INTERVAL_MS)
        tick.set_callback(lambda *_: True)
        tick.attach(context)
        try:
            polled = 0.0
            while True:
                while seen:
                    name, values = seen.pop(0)
                    if not values or values[0] != job:
                        continue
                    if name == "JobProgress" and on_progress is not None:
                        on_progress(float(values[1]), str(values[2]))
                    elif name == "JobFinished":
                        _, state, result, code, message = values
                        return JobEnd(job, state, dict(result), code, message)
                now = time.monotonic()
                if now - polled >= POLL_INTERVAL_MS / 1000:
                    # The job may have ended unseen (before the
                    # subscription, or nexusd restarted): ask.
                    polled = now
                    end = self._ended(job)
                    if end is not None and not seen:
                        return end
                context.iteration(True)
        finally:
            tick.destroy()

    def _ended(self, job: str) -> JobEnd | None:
        state = dict(self.call("GetJob", "(s)", (job,)))
        if state.get("state") == "running":
            return None
        return JobEnd(
            job,
            str(state.get("state")),
            dict(state.get("result", {})),
            str(state.get("error_code", "")),
            str(state.get("error_message", "")),
        )


def open_image(path: str) -> int:
    """Open a template image read-only with the caller's own rights."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
