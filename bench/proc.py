# SPDX-License-Identifier: MIT
"""Server processes of a run: start one, time it to ``READY=1``, read its
memory from ``/proc``, stop it.

The bench binds the ``NOTIFY_SOCKET`` datagram socket itself, as systemd
does for a ``Type=notify`` service, so the start time is the one systemd
would see: from ``fork`` and ``exec`` of the interpreter to the first
``READY=1`` datagram.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "Memory",
    "ServerProcess",
    "cpu_seconds_of",
    "memory_of",
    "start_server",
]

REPO = Path(__file__).resolve().parents[1]
#: How long a server may take to send READY=1 before the run fails.
READY_TIMEOUT = 120.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: The socket class, named apart from the ``socket`` field below.
_Socket = socket.socket
#: Variables of the bench's own environment a server must not inherit.
_SCRUBBED = (
    "NEXUS_DBUS_ADDRESS",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "JOURNAL_STREAM",
)


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process, in KiB."""

    rss_kib: int
    hwm_kib: int


def memory_of(pid: int) -> Memory:
    """``VmRSS`` and ``VmHWM`` of process *pid* from ``/proc/PID/status``."""
    found: dict[str, int] = {}
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            found[key] = int(value.split()[0])
    return Memory(found["VmRSS"], found["VmHWM"])


def cpu_seconds_of(pid: int) -> float:
    """User plus system CPU time process *pid* has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name may hold spaces; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    """A running server and how long it took to be ready."""

    process: subprocess.Popen[bytes]
    socket: Path
    ready_s: float
    log_path: Path
    _log: IO[bytes]
    _notify: _Socket
    _notify_path: Path

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def memory(self) -> Memory:
        """Its resident memory now."""
        return memory_of(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time it has used so far."""
        return cpu_seconds_of(self.pid)

    def signal(self, signum: int) -> None:
        """Send *signum* to the server."""
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM, wait (kill after ``STOP_TIMEOUT``); return its status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._notify.close()
        with contextlib.suppress(FileNotFoundError):
            self._notify_path.unlink()
        return self.process.returncode


def start_server(
    module: str, args: list[str], socket_path: Path, workdir: Path
) -> ServerProcess:
    """Run ``python -m MODULE ARGS``; return once it sent ``READY=1``.

    Raises:
        RuntimeError: the server exited or stayed silent past the timeout;
            its log is quoted.
    """
    notify_path = workdir / f"notify-{module.rsplit('.', 1)[-1]}.sock"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["NOTIFY_SOCKET"] = str(notify_path)
    env["PYTHONPATH"] = str(REPO)
    log_path = workdir / f"{module.rsplit('.', 1)[-1]}.log"
    log = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        ready_s = _wait_ready(notify, process, started)
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
        notify.close()
        notify_path.unlink()
        raise
    # The socket stays bound while the server runs, as systemd's does: the
    # server also sends STOPPING=1 and WATCHDOG=1 to it.
    return ServerProcess(
        process, socket_path, ready_s, log_path, log, notify, notify_path
    )


def _wait_ready(
    notify: socket.socket, process: subprocess.Popen[bytes], started: float
) -> float:
    deadline = started + READY_TIMEOUT
    while True:
        left = deadline - time.perf_counter()
        if left <= 0 or process.poll() is not None:
            break
        readable, _, _ = select.select([notify], [], [], min(left, 0.05))
        if not readable:
            continue
        message = notify.recv(4096)
        now = time.perf_counter()
        if b"READY=1" in message.split(b"\n"):
            return now - started
    msg = f"server {process.args!r} did not send READY=1"
    raise RuntimeError(msg)
