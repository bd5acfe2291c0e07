# SPDX-License-Identifier: MIT
"""Floods: one guest hammers nexusd's socket while another keeps calling.

Kinds of flood, each from the guest ``work``:

- ``storm``: connections as fast as threads can open them, each a whole
  call (header, EOF, read the reply);
- ``slow``: calls whose payload trickles in a byte at a time and never
  ends, held open as long as nexusd lets them;
- ``silent``: calls that send their payload but never half-close, never
  read and never close their side;
- ``crowd``: ``silent`` with more connections held than nexusd may open
  files.

The guest ``db`` meanwhile creates, lists and removes its containers in a
loop. nexusd runs as a process with the file-descriptor limit systemd
gives a service (1024), and its descriptors and resident memory are read
from ``/proc`` every few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reliability.dom0 import Dom0, connect, fds_of, rss_kib_of

__all__ = [
    "CROWD_HELD",
    "FLOODS",
    "SERVICE_NOFILE",
    "FloodResult",
    "FloodsReport",
    "judge",
    "limit_nofile",
    "run_flood",
    "run_floods",
]

FLOODS = ("storm", "slow", "silent", "crowd")
#: Connections each ``crowd`` thread holds: together far more than the
#: open files nexusd may have.
CROWD_HELD = 300
#: systemd's default soft limit of open files for a service.
SERVICE_NOFILE = 1024
#: Deadlines of the flood runs (shorter than nexusd's defaults, so that a
#: run sees many of them pass; the same code runs with any value).
LIMITS: dict[str, int | float] = {
    "header_timeout": 2.0,
    "payload_timeout": 2.0,
    "calls_per_source": 4,
    "calls_total": 64,
    "containers_per_qube": 1000,
}
#: Threads of the flooding guest.
FLOOD_THREADS = 6
#: Connections each ``slow`` or ``silent`` thread holds open at once.
HELD_PER_THREAD = 40
#: Codes a flooder may get: refused as busy, cut off by a deadline, or
#: served (a call that found a free slot).
FLOODER_CODES = frozenset({"ok", "busy", "timeout"})
_HEADER_LIST = b"nexus.ContainerList+ work keyword adminvm\0"
_HEADER_CREATE = b"nexus.ContainerCreate+flood work keyword adminvm\0"


@dataclass
class FloodResult:
    """What one flood did, and what the other guest saw meanwhile."""

    kind: str
    seconds: float = 0.0
    flooder: Counter[str] = field(default_factory=Counter)
    victim: Counter[str] = field(default_factory=Counter)
    victim_latency_ms: list[float] = field(default_factory=list)
    fds_before: int = 0
    fds_max: int = 0
    fds_after: int = 0
    rss_kib_before: int = 0
    rss_kib_max: int = 0
    rss_kib_after: int = 0
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The result as text lines."""
        lat = sorted(self.victim_latency_ms) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return [
            f"flood {self.kind} for {self.seconds:.0f} s:",
            "  flooder: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.flooder.items())),
            "  other guest: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.victim.items()))
            + f"; latency median {lat[len(lat) // 2]:.1f} ms,"
            f" p99 {p99:.1f} ms, max {lat[-1]:.1f} ms",
            f"  nexusd fds: {self.fds_before} before, {self.fds_max} at"
            f" most, {self.fds_after} after",
            f"  nexusd VmRSS: {self.rss_kib_before} KiB before,"
            f" {self.rss_kib_max} at most, {self.rss_kib_after} after",
            f"  violations: {len(self.violations)}",
            *[f"    {v}" for v in self.violations],
        ]


@dataclass
class FloodsReport:
    """Every flood of a run."""

    results: list[FloodResult] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        """All violations, each with its flood."""
        return [f"{r.kind}: {v}" for r in self.results for v in r.violations]

    def lines(self) -> list[str]:
        """The report as text lines."""
        out: list[str] = []
        for result in self.results:
            out += result.lines()
        out.append(
            f"floods held: {sum(not r.violations for r in self.results)}"
            f" of {len(self.results)}"
        )
        return out


def _code(raw: bytes) -> str:
    if not raw:
        return "no reply"
    try:
        body = json.loads(raw)
    except ValueError:
        return "not json"
    if body.get("ok") is True:
        return "ok"
    return str(body.get("error", {}).get("code"))


class _Flooder(threading.Thread):
    def __init__(
        self,
        kind: str,
        path: Path,
        stop: threading.Event,
        seen: Counter[str],
        held: int,
    ) -> None:
        super().__init__(daemon=True)
        self.held = held
        self.kind = kind
        self.path = path
        self.stop = stop
        self.seen = seen
        self.lock = threading.Lock()

    def _count(self, code: str) -> None:
        with self.lock:
            self.seen[code] += 1

    def run(self) -> None:
        if self.kind == "storm":
            self._storm()
        else:
            self._hold()

    def _storm(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10)
                    connect(sock, self.path, 10)
                    sock.sendall(_HEADER_LIST)
                    sock.shutdown(socket.SHUT_WR)
                    raw = b""
                    while chunk := sock.recv(4096):
                        raw += chunk
                self._count(_code(raw))
            except OSError as err:
                self._count(f"client {type(err).__name__}")

    def _open(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        try:
            connect(sock, self.path, 5)
            if self.kind == "slow":
                sock.sendall(_HEADER_CREATE + b"{")
            else:
                sock.sendall(_HEADER_CREATE + b'{"ports": [80]}')
        except OSError as err:
            self._count(f"client {type(err).__name__}")
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def _hold(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                while len(held) < self.held and not self.stop.is_set():
                    sock = self._open()
                    if sock is not None:
                        held.append(sock)
                time.sleep(0.2)
                for sock in list(held):
                    if self.kind == "slow":
                        with contextlib.suppress(OSError):
                            sock.send(b" ")
                    if self._ended(sock):
                        held.remove(sock)
                        sock.close()
        finally:
            for sock in held:
                sock.close()

    def _ended(self, sock: socket.socket) -> bool:
        """Whether nexusd answered and closed (``silent`` never reads
        before that: it peeks only to learn that the slot came free)."""
        try:
            data = sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError as err:
            self._count(f"client {type(err).__name__}")
            return True
        if self.kind == "silent" and data and not data.endswith(b"\n"):
            return False
        with contextlib.suppress(OSError):
            data = sock.recv(65536)
        self._count(_code(data))
        return True


class _Victim(threading.Thread):
    def __init__(self, dom0: Dom0, stop: threading.Event, index: int) -> None:
        super().__init__(daemon=True)
        self.dom0 = dom0
        self.stop = stop
        self.index = index
        self.seen: Counter[str] = Counter()
        self.latency_ms: list[float] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"v{self.index}n{n:x}"[:11]
            for service, arg in (
                ("nexus.ContainerCreate", name),
                ("nexus.ContainerList", ""),
                ("nexus.ContainerRemove", name),
            ):
                started = time.monotonic()
                reply = self.dom0.call(service, arg, source="db")
                self.latency_ms.append((time.monotonic() - started) * 1000)
                self.seen[reply.code or f"no reply ({reply.error})"] += 1


def limit_nofile(pid: int) -> None:
    """Give process *pid* the open-files limit systemd gives a service."""
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (SERVICE_NOFILE, hard))


def run_flood(
    dom0: Dom0, kind: str, seconds: float, *, held: int = HELD_PER_THREAD
) -> FloodResult:
    """Hold flood *kind* for *seconds* against the running nexusd, with
    *held* connections per flooding thread for ``slow`` and ``silent``."""
    pid = dom0.nexusd_pid
    if pid is None:
        msg = "nexusd is not running"
        raise RuntimeError(msg)
    result = FloodResult(kind)
    if kind == "crowd":
        kind, held = "silent", CROWD_HELD
    dom0.wait_serving("db")
    result.fds_before = fds_of(pid)
    result.rss_kib_before = rss_kib_of(pid)
    stop = threading.Event()
    seen: Counter[str] = Counter()
    flooders = [
        _Flooder(kind, dom0.layout.nexusd_socket, stop, seen, held)
        for _ in range(FLOOD_THREADS)
    ]
    victims = [_Victim(dom0, stop, i) for i in range(2)]
    started = time.monotonic()
    for thread in [*flooders, *victims]:
        thread.start()
    while time.monotonic() - started < seconds:
        result.fds_max = max(result.fds_max, fds_of(pid))
        result.rss_kib_max = max(result.rss_kib_max, rss_kib_of(pid))
        time.sleep(0.005)
    stop.set()
    for thread in [*flooders, *victims]:
        thread.join(timeout=30)
    result.seconds = time.monotonic() - started
    # What nexusd holds for a flood it lets go of within its deadlines.
    limits = {**LIMITS, **dom0.limits}
    settle = float(limits["payload_timeout"]) + 2.0
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and fds_of(pid) > result.fds_before:
        time.sleep(0.05)
    result.fds_after = fds_of(pid)
    result.rss_kib_after = rss_kib_of(pid)
    result.flooder = seen
    for victim in victims:
        result.victim.update(victim.seen)
        result.victim_latency_ms += victim.latency_ms
    judge(result)
    return result


def judge(result: FloodResult) -> None:
    """Add to *result* every promise the flood broke."""
    failed = {k: v for k, v in result.victim.items() if k != "ok"}
    if failed:
        result.violations.append(f"other guest's calls failed: {failed}")
    if not result.victim["ok"]:
        result.violations.append("other guest got no call through")
    odd = {k: v for k, v in result.flooder.items() if k not in FLOODER_CODES}
    if odd:
        result.violations.append(f"flooder got unclear answers: {odd}")
    if not result.flooder["busy"] + result.flooder["timeout"]:
        result.violations.append("flooder was never refused")
    if result.fds_after > result.fds_before:
        result.violations.append(
            f"descriptors not given back: {result.fds_before} before,"
            f" {result.fds_after} after"
        )
    if result.fds_max >= SERVICE_NOFILE:
        result.violations.append(
            f"descriptors reached the limit ({result.fds_max})"
        )


def run_floods(
    root: Path,
    *,
    seconds: float,
    kinds: tuple[str, ...] = FLOODS,
    limits: dict[str, int | float] | None = None,
) -> FloodsReport:
    """Run each flood in *kinds* for *seconds* against one nexusd.

    Args:
        root: an empty or missing folder for the simulated dom0.
        seconds: how long each flood lasts.
        kinds: which floods, in order.
        limits: nexusd's limits, over :data:`LIMITS`.
    """
    report = FloodsReport()
    dom0 = Dom0(root, limits={**LIMITS, **(limits or {})}).create()
    try:
        dom0.start_qubesd()
        pid = dom0.start_nexusd()
        limit_nofile(pid)
        for kind in kinds:
            report.results.append(run_flood(dom0, kind, seconds))
    finally:
        dom0.close()
    return report
