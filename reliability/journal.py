# SPDX-License-Identifier: MIT
"""What journald receives from nexusd, read off the wire.

nexusd's journal output goes through systemd-python's ``journal.send``,
which libsystemd frames in journald's native protocol. To see those exact
bytes without a journald, :func:`capture_journal` runs nexusd's logging in
a private mount namespace where ``/run/systemd/journal/socket`` is a socket
of its own, logs the given events, and parses what arrived. Needs root
(``unshare -m``).

Run as ``python -m reliability.journal`` (inside the namespace) it reads a
JSON list of ``[event, {key: value}]`` on stdin and writes the records as
JSON (values base64) on stdout.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["capture_journal", "parse_native"]

_SOCKET = Path("/run/systemd/journal/socket")
_DATAGRAM_MAX = 256 * 1024


def parse_native(datagram: bytes) -> list[tuple[str, bytes]]:
    """The ``(field, value)`` pairs of one native-protocol datagram.

    Each field is ``NAME=value\\n``, or, for a value that holds a newline,
    ``NAME\\n`` followed by its length (64-bit little-endian), the value and
    ``\\n``.

    Raises:
        ValueError: the datagram breaks the framing.
    """
    fields: list[tuple[str, bytes]] = []
    at = 0
    while at < len(datagram):
        end = datagram.find(b"\n", at)
        if end < 0:
            msg = "field without its newline"
            raise ValueError(msg)
        line = datagram[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", datagram, end + 1)
            start = end + 1 + 8
            value = datagram[start : start + size]
            if datagram[start + size : start + size + 1] != b"\n":
                msg = "binary field without its newline"
                raise ValueError(msg)
            at = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields


def capture_journal(
    events: list[tuple[str, dict[str, Any]]],
) -> list[list[tuple[str, bytes]]]:
    """Log *events* through nexusd's journal output; return each datagram
    journald would have received, parsed.

    Raises:
        OSError: no private mount namespace here (not root).
        RuntimeError: logging failed inside it.
    """
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        raise OSError(probe.stderr.decode(errors="replace").strip())
    script = (
        "mount -t tmpfs -o size=1m tmpfs /run && mkdir -p /run/systemd/journal"
        f" && exec {sys.executable} -m reliability.journal"
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        input=json.dumps(events).encode(),
        capture_output=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace").strip())
    records = json.loads(done.stdout)
    return [
        [(name, base64.b64decode(value)) for name, value in record]
        for record in records
    ]


def _inside() -> int:
    from nexusd.logs import configure_logging

    events = json.load(sys.stdin)
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(_SOCKET))
    os.environ["JOURNAL_STREAM"] = "0:0"
    import structlog

    if configure_logging(level="debug") != "journal":
        sys.stderr.write("systemd-python is missing: no journal output\n")
        return 1
    log = structlog.get_logger()
    for event, fields in events:
        log.warning(event, **fields)
    sink.settimeout(1.0)
    records = []
    for _ in events:
        datagram = sink.recv(_DATAGRAM_MAX)
        records.append(
            [
                (name, base64.b64encode(value).decode())
                for name, value in parse_native(datagram)
            ]
        )
    sink.setblocking(False)
    try:
        extra = sink.recv(_DATAGRAM_MAX)
    except BlockingIOError:
        extra = b""
    if extra:
        records.append([("EXTRA_DATAGRAM", base64.b64encode(extra).decode())])
    json.dump(records, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_inside())
