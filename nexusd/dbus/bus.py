# SPDX-License-Identifier: MIT
"""The thin layer between nexusd and its D-Bus library (pydbus on Gio).

Everything that touches pydbus, Gio or GLib's main loop on the server side
lives here, so the library can change without the service noticing. The
loop runs in its own thread on a private main context; a method call is
handed on at once as an :class:`Invocation` whose reply may come later from
any thread, so a slow call never holds the bus thread.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydbus
import structlog
from gi.repository import Gio, GLib

from nexusd.dbus import BUS_NAME, INTERFACE, OBJECT_PATH, error_name

__all__ = ["BusServer", "Caller", "Invocation"]

log = structlog.get_logger()

#: How long nexusd waits for the bus to say who a caller is.
CREDENTIALS_TIMEOUT_MS = 5000
#: How long start-up waits for the bus connection and the name.
START_TIMEOUT = 30.0
#: Callers whose credentials are remembered (unique names are never reused
#: while the bus runs, so a remembered answer stays true).
CREDENTIALS_CACHE = 256
#: Descriptors a single call may pass; more are closed and refused.
MAX_FDS = 1
#: Exit status of a child forked without exec while the loop runs.
FORK_EXIT = 70

_DBUS = (
    "org.freedesktop.DBus",
    "/org/freedesktop/DBus",
    "org.freedesktop.DBus",
)
_running_loops = 0
_running_lock = threading.Lock()


def _child_after_fork() -> None:
    # GLib's threads and locks do not survive fork: a child that goes on
    # without exec would deadlock or corrupt the bus connection, so it stops
    # here. subprocess (fork then exec) does not run this hook.
    if _running_loops:
        os.write(2, b"nexusd: fork without exec while GLib runs; exiting\n")
        os._exit(FORK_EXIT)


os.register_at_fork(after_in_child=_child_after_fork)


@dataclass(frozen=True)
class Caller:
    """Who made a call, as the bus daemon vouches for it.

    Attributes:
        unique_name: the caller's connection name (``:1.42``).
        uid: its Unix user id, None if the bus did not say.
        pid: its process id, None if the bus did not say.
        gids: its group ids if the bus reported them, else None.
    """

    unique_name: str
    uid: int | None
    pid: int | None = None
    gids: tuple[int, ...] | None = None

    @property
    def actor(self) -> str:
        """The audit trail's name for this caller (``uid:0/:1.42``)."""
        uid = "?" if self.uid is None else str(self.uid)
        return f"uid:{uid}/{self.unique_name}"


@dataclass
class Invocation:
    """One method call, to be answered once with :meth:`reply` or
    :meth:`fail` from any thread.

    Attributes:
        method: the member called (the interface is always nexusd's).
        untrusted_args: the arguments, unpacked to Python values.
        caller: who called.
        fds: descriptors passed with the call (owned by the receiver, who
            must close them).
    """

    method: str
    untrusted_args: tuple[Any, ...]
    caller: Caller
    fds: list[int] = field(default_factory=list)
    _invocation: Any = field(default=None, repr=False)
    _answered: bool = field(default=False, repr=False)

    def reply(self, signature: str, values: tuple[Any, ...]) -> None:
        """Answer with *values* of the tuple type *signature* (``"(s)"``).

        Raises:
            TypeError: *values* do not fit *signature* (nothing is sent).
        """
        value = GLib.Variant(signature, values) if values else None
        if self._answer_once():
            self._invocation.return_value(value)

    def fail(self, code: str, message: str) -> None:
        """Answer with nexusd's error *code* and a message safe to show."""
        if self._answer_once():
            self._invocation.return_dbus_error(error_name(code), message)

    def _answer_once(self) -> bool:
        if self._answered:
            return False
        self._answered = True
        return True


Dispatch = Callable[[Invocation], None]


class BusServer:
    """nexusd's connection to the bus: owns the name, serves the object,
    emits signals."""

    def __init__(
        self, address: str | None, xml: str, dispatch: Dispatch
    ) -> None:
        """Prepare; *address* None means the system bus. *dispatch* is
        called on the bus thread with each call and must not block."""
        self._address = address
        self._node = Gio.DBusNodeInfo.new_for_xml(xml)
        self._dispatch = dispatch
        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._thread: threading.Thread | None = None
        self._bus: Any = None
        self._registration = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._credentials: OrderedDict[str, Caller] = OrderedDict()
        self.unique_name: str | None = None

    def start(self) -> None:
        """Connect, publish the object, own the name (blocks; run it off
        the event loop).

        Raises:
            RuntimeError: no bus, or the name is taken or refused.
        """
        global _running_loops
        with _running_lock:
            _running_loops += 1
        self._thread = threading.Thread(
            target=self._run, name="nexusd-dbus", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self._error = RuntimeError("D-Bus start-up timed out")
        if self._error is not None:
            self.stop()
            msg = f"D-Bus: {self._error}"
            raise RuntimeError(msg) from self._error

    def _run(self) -> None:
        self._context.push_thread_default()
        try:
            try:
                self._connect()
            except (GLib.Error, RuntimeError) as err:
                self._error = err
                self._ready.set()
                return
            self._ready.set()
            self._loop.run()
        finally:
            self._close()
            self._context.pop_thread_default()

    def _connect(self) -> None:
        if self._address is None:
            address = Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM)
        else:
            address = self._address
        self._bus = pydbus.connect(address)
        con = self._bus.con
        self.unique_name = con.get_unique_name()
        con.connect("closed", self._on_closed)
        (interface,) = self._node.interfaces
        self._registration = con.register_object(
            OBJECT_PATH, interface, self._on_call, None, None
        )
        self._bus.request_name(BUS_NAME, allow_replacement=False)

    def _on_closed(self, _con: Any, remote: bool, _error: Any) -> None:
        # XXX: bus not rejoined; nexusctl sees no nexusd; accepted because the
        # system bus restarts only with dom0 (qrexec services work on).
        if remote:
            log.error("dbus_disconnected", bus=self._address or "system")

    def _close(self) -> None:
        if self._bus is None:
            return
        con = self._bus.con
        if self._registration:
            con.unregister_object(self._registration)
            self._registration = 0
        if not con.is_closed():
            try:
                con.close_sync(None)
            except GLib.Error as err:
                log.warning("dbus_close_failed", error=err.message)
        self._bus = None

    def stop(self) -> None:
        """Drop the name and the connection, end the loop thread."""
        global _running_loops
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._context.invoke_full(GLib.PRIORITY_DEFAULT, self._quit)
        thread.join()
        with _running_lock:
            _running_loops -= 1

    def _quit(self, *_args: object) -> bool:
        self._loop.quit()
        return False

    def emit(
        self, signal: str, signature: str, values: tuple[Any, ...]
    ) -> None:
        """Emit *signal* of nexusd's interface (from any thread)."""
        bus = self._bus
        if bus is None:
            return
        try:
            bus.con.emit_signal(
                None,
                OBJECT_PATH,
                INTERFACE,
                signal,
                GLib.Variant(signature, values),
            )
        except GLib.Error as err:
            log.warning("signal_not_sent", signal=signal, error=err.message)

    def _on_call(
        self,
        con: Any,
        sender: str,
        _path: str,
        _interface: str,
        method: str,
        parameters: Any,
        invocation: Any,
    ) -> None:
        fds = _take_fds(invocation)
        call = Invocation(
            method=method,
            untrusted_args=tuple(parameters.unpack()),
            caller=Caller(sender, None),
            fds=fds,
            _invocation=invocation,
        )
        if len(fds) > MAX_FDS:
            for fd in fds:
                os.close(fd)
            call.fds = []
            call.fail("bad_argument", f"at most {MAX_FDS} descriptor per call")
            return
        known = self._credentials.get(sender)
        if known is not None:
            call.caller = known
            self._dispatch(call)
            return
        con.call(
            *_DBUS,
            "GetConnectionCredentials",
            GLib.Variant("(s)", (sender,)),
            GLib.VariantType.new("(a{sv})"),
            Gio.DBusCallFlags.NONE,
            CREDENTIALS_TIMEOUT_MS,
            None,
            self._on_credentials,
            call,
        )

    def _on_credentials(self, con: Any, result: Any, call: Invocation) -> None:
        try:
            (creds,) = con.call_finish(result).unpack()
        except GLib.Error as err:
            log.warning("caller_unknown", sender=call.caller.unique_name)
            for fd in call.fds:
                os.close(fd)
            call.fds = []
            call.fail(
                "denied", f"the bus did not say who called: {err.message}"
            )
            return
        caller = _caller_from(call.caller.unique_name, creds)
        self._credentials[caller.unique_name] = caller
        while len(self._credentials) > CREDENTIALS_CACHE:
            self._credentials.popitem(last=False)
        call.caller = caller
        self._dispatch(call)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _caller_from(unique_name: str, creds: dict[str, Any]) -> Caller:
    gids = creds.get("UnixGroupIDs")
    parsed_gids = None
    if isinstance(gids, list) and all(
        _int_or_none(g) is not None for g in gids
    ):
        parsed_gids = tuple(gids)
    return Caller(
        unique_name=unique_name,
        uid=_int_or_none(creds.get("UnixUserID")),
        pid=_int_or_none(creds.get("ProcessID")),
        gids=parsed_gids,
    )


def _take_fds(invocation: Any) -> list[int]:
    fd_list = invocation.get_message().get_unix_fd_list()
    if fd_list is None:
        return []
    return [fd_list.get(i) for i in range(fd_list.get_length())]
