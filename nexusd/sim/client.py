# SPDX-License-Identifier: MIT
"""A minimal qubesd socket client, as ``qubesd-query`` talks to qubesd.

Used by ``nexus-sim query`` and by the simulated router (to start a target
qube through qubesd); nexusd itself has its own client in
:mod:`nexusd.qubes`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

__all__ = ["MAX_REPLY", "ReplyError", "parse_reply", "qubesd_call"]

#: Largest reply read back (an events stream is never read through here).
MAX_REPLY = 16 * 1024 * 1024


class ReplyError(Exception):
    """A ``2`` reply: qubesd's exception class and message."""

    def __init__(self, exc_type: str, message: str) -> None:
        """Keep the class name and message qubesd sent."""
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message


async def qubesd_call(
    path: Path,
    method: str,
    dest: str,
    arg: str = "",
    payload: bytes = b"",
    *,
    source: str = "dom0",
) -> bytes:
    """Make one call and return the raw reply (possibly empty).

    Raises:
        OSError: the socket cannot be reached.
    """
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(f"{method}+{arg} {source} name {dest}\x00".encode())
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        reply = bytearray()
        while len(reply) <= MAX_REPLY:
            chunk = await reader.read(65536)
            if not chunk:
                break
            reply += chunk
        return bytes(reply)
    finally:
        writer.close()


def parse_reply(reply: bytes) -> str:
    """Return the text of a ``0`` reply.

    Raises:
        ReplyError: a ``2`` reply (qubesd's exception).
        ValueError: an empty or malformed reply.
    """
    if reply.startswith(b"0\x00"):
        return reply[2:].decode("utf-8", "replace")
    if reply.startswith(b"2\x00"):
        parts = reply[2:].split(b"\x00")
        if len(parts) >= 3:
            raise ReplyError(
                parts[0].decode("ascii", "replace"),
                parts[2].decode("utf-8", "replace"),
            )
    if not reply:
        msg = "empty reply from qubesd"
        raise ValueError(msg)
    msg = "invalid reply format"
    raise ValueError(msg)
