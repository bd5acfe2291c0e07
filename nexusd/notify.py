# SPDX-License-Identifier: MIT
"""sd_notify through systemd-python, and the watchdog's timing.

Without systemd-python (a machine outside dom0 that lacks it), a minimal
sender of the same datagram is used, so tests and the demo still see the
real protocol.
"""

from __future__ import annotations

import os
import socket

import structlog

__all__ = ["Notifier", "watchdog_interval"]

log = structlog.get_logger()


def watchdog_interval(pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None if no watchdog is meant
    for this process.

    systemd sets ``WATCHDOG_USEC`` and, for the main process, ``WATCHDOG_PID``;
    a child that inherited them must not ping. Pings go at half the interval.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wanted = os.environ.get("WATCHDOG_PID")
    if wanted is not None and wanted != str(pid or os.getpid()):
        return None
    return int(usec) / 2_000_000


def _fallback_notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


class Notifier:
    """Sends READY, STATUS, WATCHDOG and STOPPING to the service manager."""

    def __init__(self) -> None:
        """Pick systemd-python's sender, or the fallback."""
        try:
            from systemd import daemon

            self._send = daemon.notify
        except ImportError:
            self._send = _fallback_notify

    def notify(self, **fields: str) -> None:
        """Send ``KEY=value`` lines, e.g. ``notify(READY="1")``."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            self._send(message)
        except OSError as err:
            # The manager went away (or a test closed its socket): nexusd
            # keeps serving; systemd's own watchdog judges the silence.
            log.warning("notify_failed", error=err.strerror or str(err))

    def ready(self, status: str) -> None:
        """Tell the manager that nexusd serves."""
        self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        """Update the one-line status ``systemctl status`` shows."""
        self.notify(STATUS=status)

    def watchdog(self) -> None:
        """Ping the watchdog."""
        self.notify(WATCHDOG="1")

    def stopping(self) -> None:
        """Tell the manager that nexusd is shutting down."""
        self.notify(STOPPING="1", STATUS="stopping")
