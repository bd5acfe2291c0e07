# SPDX-License-Identifier: MIT
"""A simulated dom0 with qubesd and nexusd as real processes, and a guest's
view of nexusd's socket.

nexusd runs either as a fresh interpreter (``exec``, as systemd starts it)
or forked from this already-imported process (``fork``), which skips the
interpreter's start-up so that a thousand kill cycles fit in minutes. Both
run the same ``nexusd.daemon.main``; what a crash leaves on disk does not
depend on how the process began.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine

__all__ = [
    "GUESTS",
    "Dom0",
    "Reply",
    "connect",
    "fds_of",
    "guest_call",
    "raw_call",
    "rss_kib_of",
]

PY = sys.executable
#: The nexus guests of the simulated machine (``init_machine``).
GUESTS = ("work", "db")
#: How long a started process may take to be ready.
START_TIMEOUT = 30.0
#: Deadline of one guest call, in seconds.
CALL_TIMEOUT = 15.0
_QUBESD = (
    "import sys\n"
    "from nexusd.sim.cli import main\n"
    "sys.exit(main(['qubesd', sys.argv[1]]))\n"
)
_CRASH_ENV = "NEXUS_CRASH_POINT"
_CRASH_AFTER_ENV = "NEXUS_CRASH_AFTER"


@dataclass(frozen=True)
class Reply:
    """What a guest got back from one call.

    ``body`` is the parsed JSON reply, or None when the connection ended
    without a whole reply (nexusd died, or refused the connection).
    """

    body: dict[str, Any] | None
    raw: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether nexusd answered ``ok``."""
        return self.body is not None and self.body.get("ok") is True

    @property
    def code(self) -> str | None:
        """The error code, ``ok``, or None without a reply."""
        if self.body is None:
            return None
        if self.body.get("ok") is True:
            return "ok"
        return str(self.body.get("error", {}).get("code"))


def guest_call(
    socket_path: Path,
    service: str,
    arg: str = "",
    *,
    source: str = "work",
    target: str = "keyword adminvm",
    payload: bytes | dict[str, Any] = b"",
    timeout: float = CALL_TIMEOUT,
) -> Reply:
    """One call as qrexec-daemon makes it for a guest: header, payload, EOF.

    Never raises for what the daemon does: a refused connection, a reset or
    a cut reply come back as a :class:`Reply` without a body.
    """
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    header = f"{service}+{arg} {source} {target}\0".encode()
    return raw_call(socket_path, header + payload, timeout=timeout)


def raw_call(
    socket_path: Path, data: bytes, *, timeout: float = CALL_TIMEOUT
) -> Reply:
    """Send *data* (header, NUL, payload) as one call, then EOF."""
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            connect(sock, socket_path, timeout)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as err:
        return Reply(None, b"".join(chunks), type(err).__name__)
    raw = b"".join(chunks)
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        return Reply(None, raw, "no whole reply")
    try:
        body = json.loads(raw)
    except ValueError:
        return Reply(None, raw, "reply is not JSON")
    return Reply(body, raw)


def connect(sock: socket.socket, path: Path, timeout: float) -> None:
    """Connect as qrexec does: while nexusd's listen queue is full the
    attempt is repeated (qrexec's ``qubes_connect`` loops on EAGAIN).

    Raises:
        OSError: any other failure, or still full after *timeout*.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(str(path))
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        else:
            return


def fds_of(pid: int) -> int:
    """Open file descriptors of process *pid*."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib_of(pid: int) -> int:
    """``VmRSS`` of process *pid*, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for pid {pid}"
    raise LookupError(msg)


class _Notify:
    """The NOTIFY_SOCKET datagram socket, as systemd binds it."""

    def __init__(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)
        self.sock.setblocking(True)

    def wait_ready(self, alive: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                msg = "nexusd exited before READY=1"
                raise RuntimeError(msg)
            self.sock.settimeout(0.1)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.splitlines():
                return
        msg = f"no READY=1 within {timeout:g} s"
        raise TimeoutError(msg)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Dom0:
    """A simulated dom0 folder, its qubesd and its nexusd.

    Args:
        root: an empty or missing folder.
        limits: ``[limits]`` keys of nexusd's configuration file.
        spawn: ``"exec"`` or ``"fork"`` (see the module docstring).
    """

    root: Path
    limits: dict[str, int | float] = field(default_factory=dict)
    spawn: str = "exec"
    qubesd: subprocess.Popen[bytes] | None = None
    nexusd_pid: int | None = None
    starts: int = 0
    _nexusd_proc: subprocess.Popen[bytes] | None = None
    _notify: _Notify | None = None

    @property
    def layout(self) -> SimLayout:
        """Paths of the simulated dom0."""
        return SimLayout(self.root)

    @property
    def config_file(self) -> Path:
        """nexusd's configuration file."""
        return self.layout.nexusd_config_dir / "nexusd.toml"

    @property
    def database(self) -> Path:
        """nexusd's SQLite file."""
        return self.layout.nexusd_state_dir / "nexusd.sqlite3"

    @property
    def links_policy(self) -> Path:
        """nexusd's runtime policy file."""
        return self.layout.runtime_policy_dir / "45-nexus-links.policy"

    @property
    def log_file(self) -> Path:
        """Where nexusd's stderr (its JSON log) goes."""
        return self.root / "nexusd.jsonl"

    @property
    def qubesd_log_file(self) -> Path:
        """Where the simulated qubesd's stderr goes."""
        return self.root / "qubesd.log"

    def create(self) -> Dom0:
        """Lay out the machine and nexusd's configuration."""
        init_machine(self.root)
        lines = ["[limits]"]
        lines += [f"{key} = {value!r}" for key, value in self.limits.items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self._notify = _Notify(self.root / "notify.sock")
        return self

    def start_qubesd(self) -> None:
        """Start the simulated qubesd and wait for its socket."""
        with self.qubesd_log_file.open("ab") as log:
            self.qubesd = subprocess.Popen(
                [PY, "-c", _QUBESD, str(self.root)], stderr=log
            )
        _wait_socket(self.layout.qubesd_socket, self.qubesd)

    def stop_qubesd(self, sig: int = signal.SIGTERM) -> None:
        """Stop qubesd (SIGKILL leaves its socket file behind)."""
        if self.qubesd is None:
            return
        self.qubesd.send_signal(sig)
        self.qubesd.wait(timeout=START_TIMEOUT)
        self.qubesd = None

    def nexusd_argv(self) -> list[str]:
        """nexusd's command-line arguments (without the program)."""
        return ["--sim", str(self.root), "--config", str(self.config_file)]

    def start_nexusd(
        self,
        *,
        crash_point: str | None = None,
        crash_after: int = 1,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start nexusd, wait for READY=1, return its pid.

        With *crash_point*, nexusd kills itself with SIGKILL at the
        *crash_after*-th time it reaches that point
        (:mod:`reliability.crashpoint`).
        """
        if self._notify is None:
            msg = "Dom0.create() must run first"
            raise RuntimeError(msg)
        self._notify.drain()
        env = {**(env or {}), "NOTIFY_SOCKET": str(self._notify.path)}
        if crash_point is not None:
            env[_CRASH_ENV] = crash_point
            env[_CRASH_AFTER_ENV] = str(crash_after)
        if self.spawn == "fork":
            pid = self._fork(env)
        else:
            pid = self._exec(env)
        self.nexusd_pid = pid
        self.starts += 1
        self._notify.wait_ready(self.nexusd_alive, START_TIMEOUT)
        return pid

    def _exec(self, env: dict[str, str]) -> int:
        argv = [PY, "-m", "reliability.crashpoint", *self.nexusd_argv()]
        with self.log_file.open("ab") as log:
            self._nexusd_proc = subprocess.Popen(
                argv,
                env={**_clean_env(), **env},
                stderr=log,
                cwd=Path(__file__).resolve().parents[1],
            )
        return self._nexusd_proc.pid

    def _fork(self, env: dict[str, str]) -> int:
        # Imported here, before the fork, so that the child does not pay
        # for the imports at every start.
        import nexusd.daemon  # noqa: F401
        from reliability.crashpoint import run_nexusd

        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        pid = os.fork()
        if pid == 0:  # the child: nexusd
            status = 70
            try:
                os.dup2(log_fd, 2)
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                os.environ.clear()
                os.environ.update({**_clean_env(), **env})
                status = run_nexusd(self.nexusd_argv())
            finally:
                os._exit(status)
        os.close(log_fd)
        return pid

    def nexusd_alive(self) -> bool:
        """Whether nexusd runs (a zombie does not)."""
        if self.nexusd_pid is None:
            return False
        if self._nexusd_proc is not None:
            return self._nexusd_proc.poll() is None
        try:
            done, _ = os.waitpid(self.nexusd_pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for nexusd to exit; say whether it
        did. (A process that killed itself has closed its sockets a moment
        before it can be reaped.)"""
        deadline = time.monotonic() + timeout
        while self.nexusd_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def kill_nexusd(self, sig: int = signal.SIGKILL) -> int | None:
        """Send *sig* to nexusd (if it runs), reap it, return its status."""
        pid = self.nexusd_pid
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        status: int | None
        if self._nexusd_proc is not None:
            status = self._nexusd_proc.wait(timeout=START_TIMEOUT)
            self._nexusd_proc = None
        else:
            try:
                _, raw = os.waitpid(pid, 0)
                status = os.waitstatus_to_exitcode(raw)
            except ChildProcessError:
                status = None
        self.nexusd_pid = None
        return status

    def call(self, service: str, arg: str = "", **kwargs: Any) -> Reply:
        """One guest call to nexusd (see :func:`guest_call`)."""
        return guest_call(self.layout.nexusd_socket, service, arg, **kwargs)

    def wait_serving(self, source: str = GUESTS[0]) -> bool:
        """Wait until nexusd has reached qubesd and serves *source*.

        Returns:
            True once it serves; False if nexusd died meanwhile.
        """
        deadline = time.monotonic() + START_TIMEOUT
        reply = Reply(None)
        while time.monotonic() < deadline:
            reply = self.call("nexus.ContainerList", source=source)
            if reply.ok:
                return True
            if not self.nexusd_alive():
                return False
            time.sleep(0.01)
        msg = f"nexusd does not serve {source}: {reply}"
        raise TimeoutError(msg)

    def close(self) -> None:
        """Stop nexusd and qubesd; remove nothing."""
        if self.nexusd_pid is not None:
            self.kill_nexusd(signal.SIGTERM)
        self.stop_qubesd()
        if self._notify is not None:
            self._notify.close()
            self._notify = None


def _clean_env() -> dict[str, str]:
    """This environment without what would change how nexusd runs."""
    drop = {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "JOURNAL_STREAM",
        "NEXUS_DBUS_ADDRESS",
        "NEXUS_IMPORT",
        _CRASH_ENV,
        _CRASH_AFTER_ENV,
    }
    return {k: v for k, v in os.environ.items() if k not in drop}


def _wait_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"process exited ({proc.returncode}) before {path} existed"
            raise RuntimeError(msg)
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.02)
    raise TimeoutError(path)
