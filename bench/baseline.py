# SPDX-License-Identifier: MIT
"""The baseline server: ``python -m bench.baseline SOCKET``.

A bare asyncio Unix socket server that does what every qrexec socket
service must do and nothing more: read the service descriptor up to its
NUL, read the payload to EOF, write one fixed JSON reply, close. nexusd's
call figures are reported as ratios to this server's, measured in the same
run with the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

__all__ = ["REPLY", "main"]

#: What every call gets: the shape of nexusd's reply to a call without a
#: result.
REPLY = b'{"ok":true,"result":null}\n'
_HEADER_MAX = 256
_PAYLOAD_MAX = 65536


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(
        OSError, asyncio.LimitOverrunError, asyncio.IncompleteReadError
    ):
        await reader.readuntil(b"\0")
        size = 0
        while size <= _PAYLOAD_MAX:
            chunk = await reader.read(4096)
            if not chunk:
                break
            size += len(chunk)
        writer.write(REPLY)
        writer.write_eof()
        await writer.drain()
    writer.close()


def _notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


async def _serve(path: Path) -> None:
    server = await asyncio.start_unix_server(
        _handle, path=str(path), limit=_HEADER_MAX
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _notify_ready()
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    """Serve on the socket path given until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.baseline SOCKET", file=sys.stderr)
        return 2
    asyncio.run(_serve(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
