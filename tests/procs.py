# SPDX-License-Identifier: MIT
"""nexusd and the simulated qubesd as real processes, for process tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nexusd.sim.layout import SimLayout

PY = sys.executable
QUBESD = (
    "import asyncio, sys, signal\n"
    "from pathlib import Path\n"
    "from nexusd.sim.layout import SimLayout\n"
    "from nexusd.sim.model import Dom0Model\n"
    "from nexusd.sim.qubesd import serve_qubesd\n"
    "async def main():\n"
    "    layout = SimLayout(Path(sys.argv[1]))\n"
    "    server = await serve_qubesd(Dom0Model.load(layout),"
    " layout.qubesd_socket)\n"
    "    stop = asyncio.Event()\n"
    "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM,"
    " stop.set)\n"
    "    await stop.wait()\n"
    "    await server.close()\n"
    "asyncio.run(main())\n"
)


def wait_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.02)
    raise TimeoutError(path)


def start_qubesd(root: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PY, "-c", QUBESD, str(root)])
    wait_socket(SimLayout(root).qubesd_socket)
    return proc


class Notifications:
    """A NOTIFY_SOCKET datagram socket, as systemd binds it; it also keeps
    the nexusd processes started with it, so a failing test leaves none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 10.0) -> list[str]:
        self.sock.settimeout(timeout)
        while True:
            message = self.sock.recv(4096).decode()
            self.messages.append(message)
            if line in message.splitlines():
                return message.splitlines()

    def close(self) -> None:
        self.sock.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()


def start_nexusd(
    root: Path,
    notify: Notifications,
    *,
    watchdog_own_pid: bool = False,
    **env: str,
) -> subprocess.Popen[bytes]:
    argv = [PY, "-m", "nexusd.daemon", "--sim", str(root)]
    if watchdog_own_pid:
        # As systemd does for the main process: WATCHDOG_PID is the PID
        # that runs nexusd (the shell's, kept by exec).
        argv = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *argv]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path), **env},
        stderr=subprocess.PIPE,
    )
    notify.procs.append(proc)
    notify.wait_for("READY=1")
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    status = proc.wait(timeout=15)
    if proc.stderr is not None:
        proc.stderr.close()
    return status


def guest_call(
    root: Path,
    service: str,
    source: str,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One call to nexusd's socket with qrexec's header for a dom0 service."""
    data = f"{service} {source} keyword adminvm\0".encode()
    if payload is not None:
        data += json.dumps(payload).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(SimLayout(root).nexusd_socket))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
