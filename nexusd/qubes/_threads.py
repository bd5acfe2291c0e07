# SPDX-License-Identifier: MIT
"""Blocking work the qubesadmin adapter runs in threads: feeding an import
pipe, and reading a guest service's output with a cap and a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from typing import Any

import structlog

from nexusd.qubes.errors import ServiceCallFailed
from nexusd.qubes.wire import CHUNK

__all__ = ["SERVICE_REPLY_MAX", "feed_pipe", "import_data", "run_service"]

log = structlog.get_logger()

#: Largest output nexusd takes from a service in a guest.
SERVICE_REPLY_MAX = 1024 * 1024


async def feed_pipe(
    loop: asyncio.AbstractEventLoop,
    write_fd: int,
    chunks: AsyncIterator[bytes],
    size: int,
    importing: asyncio.Future[Any],
) -> int:
    """Write up to ``size + 1`` bytes of *chunks* into the pipe, close it."""
    sent = 0
    try:
        async for chunk in chunks:
            part = chunk[: size + 1 - sent]
            await loop.run_in_executor(None, _write_all, write_fd, part)
            sent += len(part)
            if sent > size or importing.done():
                break
    except BrokenPipeError:
        log.warning("volume_import_cut", sent=sent, size=size)
    finally:
        os.close(write_fd)
    return sent


def import_data(vm: Any, volume: str, stream: Any, size: int) -> None:
    """Blocking: look the volume up (a qubesd call) and import into it."""
    vm.volumes[volume].import_data_with_size(stream, size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:CHUNK]) :]


def run_service(
    vm: Any, service_and_arg: str, payload: bytes, timeout: float
) -> bytes:
    """Blocking: run the service, feed *payload*, read a capped output."""
    try:
        proc = vm.run_service(
            service_and_arg,
            autostart=False,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as err:
        msg = f"cannot run qrexec-client: {err.strerror or err}"
        raise ServiceCallFailed(msg) from None
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        feeder = threading.Thread(
            target=_feed_stdin, args=(proc.stdin, payload), daemon=True
        )
        feeder.start()
        untrusted_output = bytearray()
        while chunk := proc.stdout.read1(CHUNK):
            untrusted_output += chunk
            if len(untrusted_output) > SERVICE_REPLY_MAX:
                proc.kill()
                msg = f"{service_and_arg} sent over {SERVICE_REPLY_MAX} bytes"
                raise ServiceCallFailed(msg)
        returncode = proc.wait()
        feeder.join()
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            proc.kill()
        proc.stdout.close()
        proc.wait()
    if timed_out.is_set():
        msg = f"{service_and_arg} gave no answer in {timeout:g} s"
        raise ServiceCallFailed(msg)
    if returncode:
        msg = f"{service_and_arg} failed (qrexec-client exit {returncode})"
        raise ServiceCallFailed(msg)
    return bytes(untrusted_output)


def _feed_stdin(stdin: Any, payload: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        stdin.write(payload)
    with contextlib.suppress(BrokenPipeError, OSError):
        stdin.close()
