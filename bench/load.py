# SPDX-License-Identifier: MIT
"""Simulated guests calling a qrexec socket service, as qrexec-daemon does.

Each guest opens a connection per call, writes the service descriptor and
its payload, half-closes, and reads the one reply to EOF: the exchange of
``qrexec-client-vm`` through qrexec-daemon to a socket service in dom0.
Guests call one after another, so *n* guests keep *n* calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.stats import Summary, summarize

__all__ = [
    "LevelResult",
    "call_once",
    "request_bytes",
    "run_level",
    "run_paced",
    "wait_serving",
]

#: A reply that starts like this is a success (nexusd sorts its keys).
_OK_PREFIX = b'{"ok":true'
_RECV = 65536
#: Pause before retrying a connect refused for a full listen backlog.
_BACKLOG_RETRY_S = 0.0002


def request_bytes(
    service: str,
    arg: str,
    source: str,
    target: str = "keyword adminvm",
    payload: bytes = b"",
) -> bytes:
    """What qrexec-daemon writes for a call: descriptor, NUL, payload."""
    return f"{service}+{arg} {source} {target}\0".encode("ascii") + payload


async def _connect(sock: socket.socket, path: str) -> None:
    # A non-blocking connect to a Unix socket fails with EAGAIN while the
    # listen backlog is full; qrexec-daemon's blocking connect would wait.
    while True:
        try:
            sock.connect(path)
        except BlockingIOError:
            await asyncio.sleep(_BACKLOG_RETRY_S)
        else:
            return


async def call_once(path: str, data: bytes) -> bytes:
    """One call over the socket at *path*; the whole reply."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await _connect(sock, path)
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := await loop.sock_recv(sock, _RECV):
            chunks.append(chunk)
    finally:
        sock.close()
    return b"".join(chunks)


def _error_code(reply: bytes) -> str:
    try:
        return str(json.loads(reply)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unreadable_reply" if reply else "no_reply"


@dataclass
class LevelResult:
    """The calls of one load level, measured in its window."""

    concurrency: int
    window_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: Every call that ended, in the warm-up and after the deadline too.
    all_calls: int = 0

    @property
    def calls(self) -> int:
        """Calls that started and ended in the window, failed ones too."""
        return len(self.latencies_s) + sum(self.errors.values())

    @property
    def calls_per_s(self) -> float:
        """Successful calls per second of the window."""
        return len(self.latencies_s) / self.window_s

    def absorb(self, other: LevelResult) -> None:
        """Add the calls and window of another round at the same level."""
        self.window_s += other.window_s
        self.latencies_s += other.latencies_s
        self.errors.update(other.errors)
        self.all_calls += other.all_calls

    def summary(self) -> Summary:
        """Percentiles of the successful calls."""
        return summarize(self.latencies_s)

    def as_dict(self) -> dict[str, object]:
        """The figures for the JSON report (milliseconds, calls/s)."""
        summary = self.summary()
        return {
            "concurrency": self.concurrency,
            "calls": self.calls,
            "ok": len(self.latencies_s),
            "errors": dict(self.errors),
            "p50_ms": summary.p50 * 1000,
            "p99_ms": summary.p99 * 1000,
            "max_ms": summary.max * 1000,
            "calls_per_s": self.calls_per_s,
        }


async def _guest(
    path: str,
    cycle: Sequence[bytes],
    window: tuple[float, float],
    result: LevelResult,
) -> None:
    start, end = window
    index = 0
    while True:
        began = time.perf_counter()
        if began >= end:
            return
        data = cycle[index % len(cycle)]
        index += 1
        try:
            reply = await call_once(path, data)
        except OSError as err:
            reply = b""
            code = f"os_error_{err.errno}"
        else:
            code = "" if reply.startswith(_OK_PREFIX) else _error_code(reply)
        done = time.perf_counter()
        result.all_calls += 1
        if began < start or done > end:
            continue
        if code:
            result.errors[code] += 1
        else:
            result.latencies_s.append(done - began)


async def run_level(
    path: str,
    cycles: Callable[[int], Sequence[bytes]],
    concurrency: int,
    *,
    duration_s: float,
    warmup_s: float,
) -> LevelResult:
    """Run *concurrency* guests against *path* for warmup plus duration.

    Guest ``i`` sends ``cycles(i)`` in turn, over and over. Only calls that
    start after the warm-up and end before the deadline count.
    """
    now = time.perf_counter()
    window = (now + warmup_s, now + warmup_s + duration_s)
    result = LevelResult(concurrency, duration_s)
    await asyncio.gather(
        *(_guest(path, cycles(i), window, result) for i in range(concurrency))
    )
    return result


async def _paced_guest(
    path: str,
    cycle: Sequence[bytes],
    window: tuple[float, float],
    mean_gap_s: float,
    rng: random.Random,
    result: LevelResult,
) -> None:
    start, end = window
    index = 0
    due = time.perf_counter() + rng.uniform(0, mean_gap_s)
    while due < end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        began = time.perf_counter()
        data = cycle[index % len(cycle)]
        index += 1
        try:
            reply = await call_once(path, data)
        except OSError as err:
            reply = b""
            code = f"os_error_{err.errno}"
        else:
            code = "" if reply.startswith(_OK_PREFIX) else _error_code(reply)
        done = time.perf_counter()
        result.all_calls += 1
        due = max(due + rng.expovariate(1 / mean_gap_s), done)
        if began < start or done > end:
            continue
        if code:
            result.errors[code] += 1
        else:
            result.latencies_s.append(done - began)


async def run_paced(
    path: str,
    cycles: Callable[[int], Sequence[bytes]],
    guests: int,
    rate: float,
    *,
    duration_s: float,
    warmup_s: float,
    seed: int = 9,
) -> LevelResult:
    """*guests* guests calling at *rate* calls per second in all.

    Each guest's calls arrive at random (exponential gaps), whether or not
    the server keeps up, so the latencies are those of a server at that
    load rather than at saturation. A guest still waiting for a reply
    sends its next call when the reply came.
    """
    now = time.perf_counter()
    window = (now + warmup_s, now + warmup_s + duration_s)
    result = LevelResult(guests, duration_s)
    rng = random.Random(seed)
    await asyncio.gather(
        *(
            _paced_guest(path, cycles(i), window, guests / rate, rng, result)
            for i in range(guests)
        )
    )
    return result


async def wait_serving(path: str, data: bytes, timeout_s: float) -> float:
    """Call until a call succeeds; return how long that took.

    A socket not there yet, or not listening yet, counts as not serving.

    Raises:
        TimeoutError: no call succeeded within *timeout_s*.
    """
    began = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                reply = await call_once(path, data)
            except (FileNotFoundError, ConnectionRefusedError):
                reply = b""
            if reply.startswith(_OK_PREFIX):
                return time.perf_counter() - began
            await asyncio.sleep(0.001)
