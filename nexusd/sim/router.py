# SPDX-License-Identifier: MIT
"""The simulated qrexec router: policy, then a socket service, byte for byte.

A call ``SOURCE -> TARGET SERVICE+ARG`` is decided by the project's policy
engine over the folder's policy directories and the saved qubes, refused as
``qrexec-client-vm`` refuses (exit status 126, ``Request refused`` on
stderr), and otherwise connected as qrexec connects it:

* to dom0: the service under the dom0 service path (``SERVICE+ARG`` in every
  folder first, then ``SERVICE``), a socket or a symlink to one, which first
  receives ``SERVICE+ARG SOURCE name|keyword TARGET\\0``;
* to another qube: its ``qubes-rpc`` folder, a socket (header
  ``SERVICE+ARG SOURCE\\0``) or a ``/dev/tcp/HOST[/PORT]`` symlink, relayed to
  that port on 127.0.0.1 with no header.

Autostart: only running qubes take part in qrexec, so a halted caller, and a
halted target when the deciding rule has ``autostart=yes`` (the default),
are started first through the folder's qubesd (``admin.vm.Start``), or
through the state file when no qubesd serves the folder. ``ask`` is answered
by the folder's settings (``deny`` unless set). Executable services and
disposable targets (``@dispvm``) are not simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog

from nexusd.policy import (
    Decision,
    PolicySet,
    Request,
    SystemInfo,
    load_policy_set,
)
from nexusd.sim import lifecycle
from nexusd.sim.client import ReplyError, parse_reply, qubesd_call
from nexusd.sim.layout import SimLayout
from nexusd.sim.model import Dom0Model, system_info_from_file
from nexusd.sim.settings import Settings

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_PROBLEM",
    "EXIT_REFUSED",
    "RouteError",
    "policy_decision",
    "policy_permits",
    "route_call",
    "split_service",
]

log = structlog.get_logger()

#: qrexec's exit statuses (libqrexec/qrexec.h).
EXIT_NOT_FOUND = 127
EXIT_REFUSED = 126
EXIT_PROBLEM = 125
#: Longest service name qrexec executes (``NAME_MAX``).
SERVICE_NAME_MAX = 255
#: Longest ``SERVICE+ARG`` qrexec carries (``MAX_SERVICE_NAME_LEN``).
SERVICE_AND_ARG_MAX = 65000
#: Longest qube name or target qrexec carries (``target_domain[64]``).
TARGET_MAX = 63
#: Bytes relayed at a time.
RELAY_CHUNK = 65536
_RPCNAME_RE = re.compile(r"\A[A-Za-z0-9_.+-]+\Z")
_TARGET_RE = re.compile(r"\A[A-Za-z0-9_.:@-]+\Z")
_LOOPBACK = ("127.0.0.1", "localhost")
_TCP_PREFIX = "/dev/tcp/"


class RouteError(Exception):
    """The call cannot be routed; ``status`` is the exit status to give."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the exit status with the message for stderr."""
        super().__init__(message)
        self.status = status


def split_service(*, untrusted_service_and_arg: str) -> tuple[str, str]:
    """Return ``(SERVICE, +ARG)`` (``+`` without argument), as qrexec.

    Raises:
        RouteError: 126 for a name qrexec would not carry.
    """
    text = untrusted_service_and_arg
    service, plus, arg = text.partition("+")
    if (
        not service
        or len(service) > SERVICE_NAME_MAX
        or len(text) > SERVICE_AND_ARG_MAX
        or not _RPCNAME_RE.match(text)
    ):
        raise RouteError(EXIT_REFUSED, "invalid service name")
    del plus
    return service, f"+{arg}"


def _check_target(*, untrusted_target: str) -> str:
    if not 0 < len(untrusted_target) <= TARGET_MAX or not _TARGET_RE.match(
        untrusted_target
    ):
        raise RouteError(EXIT_REFUSED, "invalid target")
    return untrusted_target


class _PolicyCache:
    """The folder's policy set, parsed again only when a file changed."""

    def __init__(self, layout: SimLayout) -> None:
        self.layout = layout
        self._signature: tuple[Any, ...] | None = None
        self._policy: PolicySet | None = None

    def _current_signature(self) -> tuple[Any, ...]:
        entries = []
        for folder in (
            self.layout.runtime_policy_dir,
            self.layout.policy_dir,
            self.layout.legacy_policy_dir,
        ):
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                with contextlib.suppress(OSError):
                    st = path.lstat()
                    entries.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def get(self) -> PolicySet:
        signature = self._current_signature()
        if signature != self._signature or self._policy is None:
            self._policy = load_policy_set(
                self.layout.runtime_policy_dir,
                self.layout.policy_dir,
                self.layout.legacy_policy_dir,
            )
            self._signature = signature
        return self._policy


def _decide(
    layout: SimLayout,
    source: str,
    target: str,
    service_and_arg: str,
    *,
    policy: PolicySet | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[Decision, dict[str, Any]]:
    service, argument = split_service(untrusted_service_and_arg=service_and_arg)
    target = _check_target(untrusted_target=target)
    if info is None:
        info = system_info_from_file(layout)
    if policy is None:
        policy = _PolicyCache(layout).get()
    decision = policy.evaluate(
        Request(
            service=service, argument=argument, source=source, target=target
        ),
        SystemInfo.from_dict(_for_engine(info)),
    )
    return decision, info


def _for_engine(info: dict[str, Any]) -> dict[str, Any]:
    """qubesd's system info with ``internal`` as the flag it means.

    qubesd sends the feature's value (``None`` or text); the engine wants a
    boolean, true for a non-empty value as qrexec reads it.
    """
    return {
        "domains": {
            name: {**domain, "internal": bool(domain.get("internal"))}
            for name, domain in info["domains"].items()
        }
    }


def policy_decision(
    layout: SimLayout, source: str, target: str, service_and_arg: str
) -> dict[str, Any]:
    """How the folder's policy decides a call, without making it.

    Returns ``{"action", "target", "file", "line", "reason"}``; ``file`` is
    a path string or ``None``.
    """
    try:
        decision, _ = _decide(layout, source, target, service_and_arg)
    except RouteError as exc:
        return {
            "action": "deny",
            "target": None,
            "file": None,
            "line": None,
            "reason": str(exc),
        }
    return {
        "action": decision.action,
        "target": decision.target,
        "file": str(decision.file) if decision.file is not None else None,
        "line": decision.line,
        "reason": decision.reason,
    }


def policy_permits(
    layout: SimLayout,
    system_info: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[str, str, str, str], bool]:
    """A ``permit(source, service, arg, target)`` for the qubesd server:
    whether policy allows it outright (``ask`` does not count, as in
    qubesd's admin extension).

    *system_info* gives the current qubes (the server passes its model's
    ``system_info``); by default the state file is read.
    """
    cache = _PolicyCache(layout)

    def permit(source: str, service: str, arg: str, target: str) -> bool:
        try:
            info = system_info() if system_info is not None else None
            decision, _ = _decide(
                layout,
                source,
                target,
                f"{service}+{arg}",
                policy=cache.get(),
                info=info,
            )
        except (RouteError, OSError, ValueError):
            return False
        return bool(decision.action == "allow")

    return permit


def _normalized_target(target: str, info: dict[str, Any]) -> str:
    """qrexec's intended target: a name of no qube becomes ``@default``."""
    if target.startswith("@") or target.startswith("uuid:"):
        return target
    return target if target in info["domains"] else "@default"


def _resolve(layout: SimLayout, decision: Decision, requested: str) -> str:
    """The target an allowed (or answered) decision connects to.

    Raises:
        RouteError: 126 when refused, or an ``ask`` answered ``deny``.
    """
    if decision.action == "allow" and decision.target:
        return str(decision.target)
    if decision.action == "ask" and Settings.load(layout).ask == "allow":
        if requested in decision.targets_for_ask:
            return requested
        if decision.target:
            return str(decision.target)
    raise RouteError(EXIT_REFUSED, "Request refused")


async def _ensure_running(layout: SimLayout, qube: str) -> None:
    """Start *qube* through qubesd, or through the state file without one."""
    try:
        reply = await qubesd_call(layout.qubesd_socket, "admin.vm.Start", qube)
    except OSError:
        model = Dom0Model.load(layout)
        lifecycle.start(model, model.find(qube))
        return
    try:
        parse_reply(reply)
    except (ReplyError, ValueError) as exc:
        raise RouteError(EXIT_PROBLEM, f"cannot start {qube}: {exc}") from exc


def _find_service(dirs: tuple[Path, ...], service: str, argument: str) -> Path:
    names = [f"{service}{argument}", service]
    for name in names:
        if len(name) > SERVICE_NAME_MAX:
            continue
        for folder in dirs:
            path = folder / name
            if path.is_symlink() or path.exists():
                return path
    raise RouteError(EXIT_NOT_FOUND, f"service {service} not found")


async def _open_service(
    path: Path, argument: str, *, vm_side: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Connect to a service entry; the flag says whether it takes a header."""
    if path.is_symlink():
        link = os.readlink(path)
        if link.startswith(_TCP_PREFIX):
            if not vm_side:
                raise RouteError(EXIT_PROBLEM, "/dev/tcp service in dom0")
            host, _, port_text = link[len(_TCP_PREFIX) :].partition("/")
            port_text = port_text or argument.lstrip("+")
            if host not in _LOOPBACK or not port_text.isdigit():
                raise RouteError(EXIT_PROBLEM, "unsupported /dev/tcp target")
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", int(port_text)
            )
            return reader, writer, False
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise RouteError(
            EXIT_NOT_FOUND, f"service {path.name} not found"
        ) from exc
    if not stat.S_ISSOCK(mode):
        raise RouteError(EXIT_PROBLEM, "only socket services are simulated")
    reader, writer = await asyncio.open_unix_connection(str(path))
    return reader, writer, True


async def _pump_in(
    stdin: asyncio.StreamReader | bytes, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        if isinstance(stdin, bytes):
            writer.write(stdin)
        else:
            while chunk := await stdin.read(RELAY_CHUNK):
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _pump_out(reader: asyncio.StreamReader, stdout: Any) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(RELAY_CHUNK):
            result = stdout.write(chunk)
            if isinstance(stdout, asyncio.StreamWriter):
                await stdout.drain()
            elif asyncio.iscoroutine(result):
                await result
            flush = getattr(stdout, "flush", None)
            if flush is not None and not isinstance(
                stdout, asyncio.StreamWriter
            ):
                flush()


async def route_call(
    layout: SimLayout,
    source: str,
    target: str,
    service_and_arg: str,
    stdin: asyncio.StreamReader | bytes,
    stdout: Any,
    *,
    stderr: IO[str] | None = None,
) -> int:
    """Make one qrexec call from *source*; return qrexec's exit status.

    *stdout* takes the service's bytes: a binary file, an
    :class:`asyncio.StreamWriter`, or anything with ``write(bytes)``.
    Diagnostics go to *stderr* (``sys.stderr`` by default).
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        return await _route(
            layout, source, target, service_and_arg, stdin, stdout
        )
    except RouteError as exc:
        log.info(
            "call_refused", source=source, status=exc.status, reason=str(exc)
        )
        print(str(exc), file=err)
        return exc.status
    except OSError as exc:
        log.warning("call_failed", source=source, error=str(exc))
        print(f"connection to the service failed: {exc.strerror}", file=err)
        return EXIT_PROBLEM


async def _route(
    layout: SimLayout,
    source: str,
    target: str,
    service_and_arg: str,
    stdin: asyncio.StreamReader | bytes,
    stdout: Any,
) -> int:
    decision, info = _decide(layout, source, target, service_and_arg)
    if source not in info["domains"] or source == "dom0":
        raise RouteError(EXIT_REFUSED, "Request refused")
    requested = _normalized_target(target, info)
    resolved = _resolve(layout, decision, requested)
    service, argument = split_service(untrusted_service_and_arg=service_and_arg)
    log.info(
        "call_allowed",
        source=source,
        target=resolved,
        service=service,
        file=str(decision.file) if decision.file else None,
        line=decision.line,
    )
    if resolved.startswith("@dispvm"):
        raise RouteError(EXIT_PROBLEM, "disposable targets are not simulated")
    if info["domains"][source]["power_state"] == "Halted":
        await _ensure_running(layout, source)
    if resolved == "dom0":
        path = _find_service(layout.rpc_dirs, service, argument)
        kind = "keyword" if requested.startswith("@") else "name"
        header = f"{service}{argument} {source} {kind} {requested.lstrip('@')}"
        vm_side = False
    else:
        if resolved not in info["domains"]:
            raise RouteError(EXIT_REFUSED, "Request refused")
        if info["domains"][resolved]["power_state"] == "Halted":
            await _ensure_running(layout, resolved)
        path = _find_service((layout.vm_rpc_dir(resolved),), service, argument)
        header = f"{service}{argument} {source}"
        vm_side = True
    reader, writer, with_header = await _open_service(
        path, argument, vm_side=vm_side
    )
    try:
        if with_header:
            writer.write(header.encode("ascii") + b"\x00")
        await asyncio.gather(_pump_in(stdin, writer), _pump_out(reader, stdout))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return 0
