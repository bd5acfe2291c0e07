# SPDX-License-Identifier: MIT
"""A private ``dbus-daemon`` for tests and the demo, with the system bus's
default rules and nexusd's shipped bus policy.

The generated configuration starts from what the system bus denies by
default (owning names, method calls) and then includes the policy file the
RPM installs, so who may own ``org.tesseraqt.Nexus1`` and who may call it
is decided exactly as on dom0's system bus.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import quoteattr

__all__ = ["PrivateBus", "shipped_policy"]

#: How long the bus daemon may take to print its address.
START_TIMEOUT = 10.0
#: How long it may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: The bus socket's folder; world-searchable so another uid can connect.
SOCKET_DIR_MODE = 0o755

_SYSTEM_DEFAULTS = """\
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
"""

#: Lets every connection own and call anything: for tests that show what
#: nexusd itself refuses when a bus policy lets a call through.
_PERMISSIVE = """\
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
"""


def shipped_policy() -> Path | None:
    """The bus policy file: the source tree's, else the installed one."""
    candidates = (
        Path(__file__).resolve().parents[2]
        / "dbus"
        / "org.tesseraqt.Nexus1.conf",
        Path("/usr/share/dbus-1/system.d/org.tesseraqt.Nexus1.conf"),
    )
    for path in candidates:
        if path.is_file():
            return path
    return None


def render_config(
    socket_path: Path, policy: Path | None, *, permissive: bool
) -> str:
    """The bus configuration: system defaults (or all allowed) plus the
    included *policy* file."""
    include = ""
    if policy is not None:
        include = f"  <include>{policy}</include>\n"
    rules = _PERMISSIVE if permissive else _SYSTEM_DEFAULTS
    listen = quoteattr(f"unix:path={socket_path}")[1:-1]
    return (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus'
        ' Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<busconfig>\n"
        "  <type>nexus-private</type>\n"
        f"  <listen>{listen}</listen>\n"
        "  <auth>EXTERNAL</auth>\n"
        f"{rules}{include}"
        "</busconfig>\n"
    )


class PrivateBus:
    """A ``dbus-daemon`` of our own; use as a context manager.

    Attributes:
        address: the bus address, once started.
        log_path: what the bus daemon wrote to stderr (its refusals, say),
            until it is stopped.
    """

    def __init__(
        self, policy: Path | None = None, *, permissive: bool = False
    ) -> None:
        """Prepare a bus applying *policy* (default: the shipped file);
        *permissive* lets everyone do everything and includes no policy
        unless one is given (tests of nexusd's own checks)."""
        if policy is None and not permissive:
            policy = shipped_policy()
        self._policy = policy
        if self._policy is None and not permissive:
            msg = "nexusd's bus policy file was not found"
            raise FileNotFoundError(msg)
        self._permissive = permissive
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log_path: Path | None = None

    def start(self) -> str:
        """Start the bus; return its address.

        Raises:
            RuntimeError: dbus-daemon is missing or did not start.
        """
        binary = shutil.which("dbus-daemon")
        if binary is None:
            msg = "dbus-daemon is not installed"
            raise RuntimeError(msg)
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-bus-"))
        os.chmod(self._dir, SOCKET_DIR_MODE)
        config = self._dir / "bus.conf"
        config.write_text(
            render_config(
                self._dir / "socket", self._policy, permissive=self._permissive
            ),
            encoding="utf-8",
        )
        self.log_path = self._dir / "bus.log"
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                [
                    binary,
                    "--nofork",
                    f"--config-file={config}",
                    "--print-address",
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                stderr=log_file,
            )
        stdout = self._process.stdout
        line = self._read_address(stdout.fileno()) if stdout else ""
        if not line.startswith("unix:"):
            self.stop()
            msg = f"dbus-daemon did not start (said {line!r})"
            raise RuntimeError(msg)
        self.address = line
        return line

    @staticmethod
    def _read_address(fd: int) -> str:
        import select

        data = b""
        deadline = time.monotonic() + START_TIMEOUT
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", "replace").strip()

    def stop(self) -> None:
        """Stop the bus and remove its folder."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        folder, self._dir = self._dir, None
        if folder is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)

    def __enter__(self) -> PrivateBus:
        """Start the bus."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the bus."""
        self.stop()
