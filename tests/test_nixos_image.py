# SPDX-License-Identifier: MIT
"""The image stream: chunks, hash while streaming, the held-back last chunk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nexusd.errors import BadArgument
from nexusd.nixos.errors import ImageMismatch, ImageUnreadable
from nexusd.nixos.image import ImageStream, parse_sha256

CHUNK = 1000


def write(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    return path, data


async def drain(stream: ImageStream) -> list[bytes]:
    got = []
    async for chunk in stream.chunks():
        got.append(chunk)
    return got


class TestChunks:
    async def test_chunks_are_the_file_in_order(self, tmp_path: Path) -> None:
        """If the image is read, the chunks are the file, none larger than
        the chunk size, and the digest is its sha256."""
        path, data = write(tmp_path, 3 * CHUNK + 7)
        stream = ImageStream.open(path, chunk_size=CHUNK)

        chunks = await drain(stream)

        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) == CHUNK
        assert stream.digest == hashlib.sha256(data).hexdigest()

    async def test_wrong_hash_holds_back_the_last_chunk(
        self, tmp_path: Path
    ) -> None:
        """If the hash is not the expected one, every chunk but the last is
        yielded and then ImageMismatch is raised, so the import is short."""
        path, data = write(tmp_path, 3 * CHUNK + 7)
        stream = ImageStream.open(path, expected="0" * 64, chunk_size=CHUNK)
        got: list[bytes] = []

        with pytest.raises(ImageMismatch) as caught:
            async for chunk in stream.chunks():
                got.append(chunk)

        assert caught.value.code == "image_mismatch"
        assert b"".join(got) == data[: 3 * CHUNK]
        assert stream.digest is None

    async def test_one_chunk_image_with_wrong_hash_sends_nothing(
        self, tmp_path: Path
    ) -> None:
        """If the image fits in one chunk and its hash is wrong, not a byte
        is yielded."""
        path, _ = write(tmp_path, CHUNK // 2)
        stream = ImageStream.open(path, expected="f" * 64, chunk_size=CHUNK)

        with pytest.raises(ImageMismatch):
            await drain(stream)

    async def test_file_that_shrinks_is_refused(self, tmp_path: Path) -> None:
        """If the file is cut while it streams, ImageUnreadable is raised
        instead of a short import."""
        path, _ = write(tmp_path, 3 * CHUNK)
        stream = ImageStream.open(path, chunk_size=CHUNK)

        with pytest.raises(ImageUnreadable) as caught:
            async for _ in stream.chunks():
                os.truncate(path, CHUNK)

        assert "shrank" in caught.value.message

    async def test_open_file_is_read_from_its_start(
        self, tmp_path: Path
    ) -> None:
        """If the image comes as a file the caller opened and moved in, it
        is still read whole."""
        path, data = write(tmp_path, 2 * CHUNK + 1)
        handle = path.open("rb")
        handle.seek(CHUNK)
        stream = ImageStream.open(handle, chunk_size=CHUNK)

        chunks = await drain(stream)

        assert b"".join(chunks) == data
        stream.close()


class TestOpen:
    def test_directory_is_refused(self, tmp_path: Path) -> None:
        """If the path is a directory, ImageUnreadable."""
        with pytest.raises(ImageUnreadable):
            ImageStream.open(tmp_path)

    def test_fifo_is_refused(self, tmp_path: Path) -> None:
        """If the image is not a regular file (its size is unknown), it is
        refused before anything is read."""
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        handle = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

        with pytest.raises(ImageUnreadable):
            ImageStream.open(os.fdopen(handle, "rb"))


class TestParseSha256:
    def test_upper_case_is_lowered(self) -> None:
        """If the digest is in upper case, it comes back in lower case."""
        assert parse_sha256(untrusted_digest="AB" * 32) == "ab" * 32

    @pytest.mark.parametrize(
        "value",
        ["", "a" * 63, "a" * 65, "z" * 64, " " + "a" * 63, "a" * 63 + "\n"],
        ids=["empty", "short", "long", "not-hex", "space", "newline"],
    )
    def test_malformed_digest_is_refused(self, value: str) -> None:
        """If the digest is not 64 hex digits, bad_argument."""
        with pytest.raises(BadArgument) as caught:
            parse_sha256(untrusted_digest=value)

        assert caught.value.code == "bad_argument"
