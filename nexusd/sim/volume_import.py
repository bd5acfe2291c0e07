# SPDX-License-Identifier: MIT
"""``admin.vm.volume.ImportWithSize``: stream an image into a volume.

In dom0 this call is a script beside qubesd (``qubes-rpc/admin.vm.volume.
Import``): it reads the size line (at most 21 bytes), asks qubesd for a
path, copies exactly that many bytes with ``dd`` and reports ``ok`` or the
failure. This module does the same over the simulated qubesd socket, never
holding more than one chunk of the image in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from nexusd.sim import lifecycle
from nexusd.sim.qubesexc import (
    ProtocolError,
    QubesdError,
    QubesVMNotHaltedError,
)

if TYPE_CHECKING:
    from pathlib import Path

    from nexusd.sim.qubesd import QubesdServer

__all__ = ["SIZE_LINE_MAX", "parse_size", "run"]

log = structlog.get_logger()

#: ``qubesd-query --single-line --max-bytes=21`` in the import script.
SIZE_LINE_MAX = 21
#: qubesd's ``validate_number``: at most 19 decimal digits.
SIZE_DIGITS_MAX = 19
#: Bytes copied at a time (``dd bs=128K``).
COPY_CHUNK = 128 * 1024
_PRINTABLE_MIN, _PRINTABLE_MAX = 0x20, 0x7E


class _NoReply(Exception):
    """The script would fail before answering: the caller gets no bytes."""


def parse_size(*, untrusted_size: bytes) -> int:
    """Return a size line's number as qubesd's ``validate_number`` checks.

    Raises:
        ProtocolError: not digits, too long, or a leading zero.
    """
    name = "Size of new data"
    if not untrusted_size.isdigit():
        raise ProtocolError(f"{name} contains non ASCII digits")
    if len(untrusted_size) > SIZE_DIGITS_MAX:
        raise ProtocolError(f"{name} is bigger than 19 decimal digits")
    if untrusted_size[0] == ord("0") and untrusted_size != b"0":
        raise ProtocolError(f"{name} contains spurious leading zeros")
    return int(untrusted_size)


async def _read_size_line(
    untrusted_rest: bytearray, reader: asyncio.StreamReader
) -> bytes:
    """Take the size line off the stream, as ``--single-line`` reads it."""
    while b"\n" not in untrusted_rest[:SIZE_LINE_MAX]:
        if len(untrusted_rest) >= SIZE_LINE_MAX:
            raise _NoReply("no newline in the first 21 bytes")
        untrusted_chunk = await reader.read(COPY_CHUNK)
        if not untrusted_chunk:
            raise _NoReply("end of input without a newline")
        untrusted_rest += untrusted_chunk
    untrusted_line, _, tail = bytes(untrusted_rest).partition(b"\n")
    del untrusted_rest[:]
    untrusted_rest += tail
    if any(not _PRINTABLE_MIN <= b <= _PRINTABLE_MAX for b in untrusted_line):
        raise _NoReply("invalid byte in the size line")
    return untrusted_line


async def run(
    server: QubesdServer,
    fields: tuple[bytes, bytes, bytes, bytes],
    untrusted_first: bytes,
    reader: asyncio.StreamReader,
) -> bytes | None:
    """Serve one import; return the reply, or ``None`` for no reply."""
    untrusted_rest = bytearray(untrusted_first)
    try:
        untrusted_line = await _read_size_line(untrusted_rest, reader)
        call, _ = server.decode_call(fields, b"")
        qube = call.dest
        if call.arg not in qube.volume_names():
            msg = f"Argument not in {qube.name} volumes"
            raise ProtocolError(msg)
        if not qube.is_halted():
            raise QubesVMNotHaltedError(qube.name)
        if untrusted_line:
            size = parse_size(untrusted_size=untrusted_line)
        else:
            size = qube.volume_sizes.get(
                call.arg, qube.default_volume_size(call.arg)
            )
        path = lifecycle.import_begin(server.model, qube, call.arg, size)
        error = await _copy(path, size, untrusted_rest, reader)
        lifecycle.import_end(server.model, qube, call.arg, size, error)
    except _NoReply as exc:
        log.warning("import_refused", reason=str(exc))
        return None
    except QubesdError as exc:
        log.warning("import_failed", error=type(exc).__name__)
        return _encode_exception(exc)
    except Exception:
        log.exception("import_crashed")
        return None
    log.info("volume_imported", qube=qube.name, volume=call.arg, size=size)
    return b"0\x00"


async def _copy(
    target: Path,
    size: int,
    untrusted_rest: bytearray,
    reader: asyncio.StreamReader,
) -> str | None:
    """Copy exactly *size* bytes into *target*; return dd's error, if any."""
    partial = target.with_name(target.name + ".import")
    copied = 0
    extra = False
    try:
        with partial.open("wb") as out:
            pending = bytes(untrusted_rest)
            while copied < size:
                if not pending:
                    pending = await reader.read(COPY_CHUNK)
                    if not pending:
                        break
                take = pending[: size - copied]
                out.write(take)
                copied += len(take)
                pending = pending[len(take) :]
            if copied == size:
                extra = bool(pending) or bool(await reader.read(1))
            out.flush()
        if copied != size:
            return (
                f"not enough data (copied {copied} bytes,"
                f" expected {size} bytes)"
            )
        if extra:
            return f"too much data (expected {size} bytes)"
        lifecycle.sync_file(partial)
        partial.replace(target)
    except OSError as exc:
        log.error("import_write_failed", error=exc.strerror)
        return "error copying data"
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return None


def _encode_exception(exc: QubesdError) -> bytes:
    from nexusd.sim.qubesd import encode_exception

    return encode_exception(exc)
