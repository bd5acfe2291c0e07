# SPDX-License-Identifier: MIT
"""A root image read once, in chunks, and hashed while it streams.

The image may be tens of GiB: it is never held whole. The last chunk is
held back until the whole hash is known, so an image whose sha256 is not
the one expected never reaches the end of the volume import, and qubesd
discards the import as short instead of keeping wrong data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import structlog

from nexusd.errors import BadArgument
from nexusd.nixos.errors import ImageMismatch, ImageUnreadable

__all__ = [
    "CHUNK_SIZE",
    "ImageStream",
    "Progress",
    "parse_sha256",
]

log = structlog.get_logger()

#: Bytes read from the image and sent to qubesd at a time.
CHUNK_SIZE = 1024 * 1024
#: Length of a sha256 digest in hex.
SHA256_HEX_LEN = 64
_SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")

#: How a file passed as a descriptor (with no path) is named in messages.
PASSED_FILE = "the file passed"
#: ``progress(done, total)``: bytes sent so far and the image's size.
Progress = Callable[[int, int], object]


def parse_sha256(*, untrusted_digest: str) -> str:
    """Return a sha256 given in hex (any case) as lowercase hex.

    Raises:
        BadArgument: not 64 hex digits.
    """
    if len(untrusted_digest) != SHA256_HEX_LEN:
        msg = (
            f"sha256 must be {SHA256_HEX_LEN} hex digits, got"
            f" {len(untrusted_digest)} characters"
        )
        raise BadArgument(msg)
    digest = untrusted_digest.lower()
    if not digest.isascii() or _SHA256_RE.match(digest) is None:
        msg = "sha256 must be hex digits only"
        raise BadArgument(msg)
    return digest


class ImageStream:
    """One image file, opened before anything is created in dom0.

    Attributes:
        name: the image's path, or how to name a file the caller passed.
        size: its size when opened; exactly this many bytes are sent.
        expected: the sha256 it must have, or ``None`` to take any.
        digest: the sha256 of what was sent, once all of it was read.
    """

    def __init__(
        self,
        name: str,
        file: BinaryIO,
        size: int,
        *,
        expected: str | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        """Wrap an open *file*; use :meth:`open` instead."""
        self.name = name
        self.size = size
        self.expected = expected
        self.digest: str | None = None
        self._file = file
        self._progress = progress
        self._chunk_size = chunk_size

    @classmethod
    def open(
        cls,
        image: Path | BinaryIO,
        *,
        expected: str | None = None,
        progress: Progress | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> ImageStream:
        """Open *image*, a path or a file the caller opened (a descriptor
        passed over D-Bus); it must be a non-empty regular file.

        Raises:
            ImageUnreadable: missing, unreadable, not a file, or empty.
        """
        if isinstance(image, Path):
            path = image
            name = str(path)
            try:
                # Unbuffered: chunks are large, and a change of the file
                # while it streams is seen at once.
                file: BinaryIO = path.open("rb", buffering=0)
            except OSError as err:
                msg = f"cannot open image {name!r}: {err.strerror or err}"
                raise ImageUnreadable(msg) from None
        else:
            file = image
            given = getattr(image, "name", None)
            name = given if isinstance(given, str) else PASSED_FILE
        try:
            info = os.fstat(file.fileno())
        except (OSError, ValueError) as err:
            file.close()
            msg = f"cannot read image {name!r}: {err}"
            raise ImageUnreadable(msg) from None
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            file.close()
            msg = f"image {name!r} is not a non-empty regular file"
            raise ImageUnreadable(msg)
        file.seek(0)
        return cls(
            name,
            file,
            info.st_size,
            expected=expected,
            progress=progress,
            chunk_size=chunk_size,
        )

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _report(self, done: int) -> None:
        if self._progress is None:
            return
        try:
            self._progress(done, self.size)
        except Exception:  # noqa: BLE001 - a display must not break an import
            log.warning("progress_report_failed", done=done, total=self.size)

    def _read_blocking(self, count: int) -> bytes:
        """Up to *count* bytes; fewer only at the end of the file."""
        parts = []
        while count > 0:
            part = self._file.read(count)
            if not part:
                break
            parts.append(part)
            count -= len(part)
        return b"".join(parts)

    async def _read(self, count: int) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._read_blocking, count)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the image's ``size`` bytes; verify before the last chunk.

        Raises:
            ImageUnreadable: the file shrank or could not be read.
            ImageMismatch: the hash is not the one expected; the last chunk
                is not yielded.
        """
        hasher = hashlib.sha256()
        done = 0
        self._report(0)
        pending = await self._next(hasher, done)
        while pending:
            done += len(pending)
            following = await self._next(hasher, done)
            if not following:
                self._verify(hasher)
            yield pending
            self._report(done)
            pending = following

    async def _next(self, hasher: hashlib._Hash, done: int) -> bytes:
        want = min(self._chunk_size, self.size - done)
        if want == 0:
            return b""
        try:
            chunk = await self._read(want)
        except OSError as err:
            msg = f"reading image {self.name!r} failed: {err.strerror}"
            raise ImageUnreadable(msg) from None
        if len(chunk) != want:
            msg = f"image {self.name!r} shrank while it was read"
            raise ImageUnreadable(msg)
        hasher.update(chunk)
        return chunk

    def _verify(self, hasher: hashlib._Hash) -> None:
        digest = hasher.hexdigest()
        if self.expected is not None and digest != self.expected:
            log.warning(
                "image_hash_mismatch",
                image=self.name,
                size=self.size,
                sha256_prefix=digest[:12],
                expected_prefix=self.expected[:12],
            )
            msg = (
                f"image {self.name!r} has sha256 {digest}, not {self.expected}"
            )
            raise ImageMismatch(msg)
        self.digest = digest
