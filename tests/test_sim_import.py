# SPDX-License-Identifier: MIT
"""admin.vm.volume.* on the simulated qubesd: listing, info, streamed import."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from nexusd.sim import lifecycle
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import build_capture_machine
from nexusd.sim.qubesd import MAX_REQUEST, serve_qubesd

GUARD = 10
HEADER = b"admin.vm.volume.ImportWithSize+root dom0 name nixos-25.05\x00"


async def exchange(path: Path, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(raw)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


@pytest.fixture
async def capture(tmp_path: Path):
    layout = SimLayout(tmp_path)
    model = build_capture_machine(layout)
    server = await serve_qubesd(model, layout.qubesd_socket)
    yield model, layout
    await server.close()


def image(layout: SimLayout) -> Path:
    return layout.vm_volume_dir("nixos-25.05") / "root.img"


class TestVolumeList:
    async def test_qube_lists_its_four_volumes(self, capture) -> None:
        """If a qube's volumes are listed, qubesd's four names come back."""
        _, layout = capture

        reply = await exchange(
            layout.qubesd_socket, b"admin.vm.volume.List+ dom0 name work\x00"
        )

        assert reply == b"0\x00root\nprivate\nvolatile\nkernel\n"

    async def test_unknown_volume_info_is_permission_denied(
        self, capture
    ) -> None:
        """If Info names a volume the qube lacks, PermissionDenied as
        qubesd's enforce_arg answers."""
        _, layout = capture

        reply = await exchange(
            layout.qubesd_socket,
            b"admin.vm.volume.Info+swap dom0 name work\x00",
        )

        assert reply == (
            b"2\x00PermissionDenied\x00\x00Argument not in 'work volumes'\x00"
        )

    async def test_template_root_info_is_its_own(self, capture) -> None:
        """If a template's root volume is described, it is saved on stop,
        not a snapshot, with the file's path."""
        _, layout = capture

        reply = await exchange(
            layout.qubesd_socket,
            b"admin.vm.volume.Info+root dom0 name nixos-25.05\x00",
        )

        fields = dict(
            line.split("=", 1) for line in reply[2:].decode().splitlines()
        )
        assert fields["save_on_stop"] == "True"
        assert fields["snap_on_start"] == "False"
        assert fields["path"] == str(image(layout))


class TestImportWithSize:
    async def test_image_over_64k_is_streamed_into_the_volume(
        self, capture
    ) -> None:
        """If exactly the announced bytes follow the size line, they land in
        the volume file and the size is recorded (the 64 KiB cap does not
        apply to this method)."""
        model, layout = capture
        data = bytes(range(256)) * (MAX_REQUEST // 64)

        reply = await exchange(
            layout.qubesd_socket, HEADER + f"{len(data)}\n".encode() + data
        )

        assert reply == b"0\x00"
        assert hashlib.sha256(image(layout).read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
        assert model.domains["nixos-25.05"].volume_sizes["root"] == len(data)

    async def test_short_data_fails_and_keeps_old_image(self, capture) -> None:
        """If fewer bytes than announced arrive, the reply is qubesd's
        'not enough data' and the volume file is unchanged."""
        _, layout = capture
        await exchange(layout.qubesd_socket, HEADER + b"3\nold")

        reply = await exchange(layout.qubesd_socket, HEADER + b"10\nnew")

        assert reply == (
            b"2\x00QubesException\x00\x00Data import failed: not enough data"
            b" (copied 3 bytes, expected 10 bytes)\x00"
        )
        assert image(layout).read_bytes() == b"old"

    async def test_extra_data_fails(self, capture) -> None:
        """If more bytes than announced arrive, 'too much data'."""
        _, layout = capture

        reply = await exchange(layout.qubesd_socket, HEADER + b"2\nabc")

        assert reply == (
            b"2\x00QubesException\x00\x00Data import failed: too much data"
            b" (expected 2 bytes)\x00"
        )
        assert not image(layout).exists()

    async def test_running_qube_is_refused(self, capture) -> None:
        """If the qube runs, QubesVMNotHaltedError and nothing is written."""
        model, layout = capture
        lifecycle.start(model, model.domains["nixos-25.05"])

        reply = await exchange(layout.qubesd_socket, HEADER + b"1\nx")

        assert reply.startswith(b"2\x00QubesVMNotHaltedError\x00")
        assert not image(layout).exists()

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            (b"12a", b"Size of new data contains non ASCII digits"),
            (b"007", b"Size of new data contains spurious leading zeros"),
            (b"1" * 20, b"Size of new data is bigger than 19 decimal digits"),
        ],
    )
    async def test_bad_size_is_protocol_error(
        self, capture, line: bytes, message: bytes
    ) -> None:
        """If the size line is not a plain number, qubesd's ProtocolError."""
        _, layout = capture

        reply = await exchange(layout.qubesd_socket, HEADER + line + b"\nx")

        assert reply == b"2\x00ProtocolError\x00\x00" + message + b"\x00"
        assert not image(layout).exists()

    async def test_size_line_without_newline_gets_zero_bytes(
        self, capture
    ) -> None:
        """If no newline comes in the first 21 bytes, the script fails
        before answering: zero bytes."""
        _, layout = capture

        reply = await exchange(layout.qubesd_socket, HEADER + b"1" * 40)

        assert reply == b""

    async def test_unknown_volume_is_protocol_error(self, capture) -> None:
        """If the volume is not the qube's, ProtocolError from ImportBegin."""
        _, layout = capture
        header = b"admin.vm.volume.ImportWithSize+swap dom0 name work\x00"

        reply = await exchange(layout.qubesd_socket, header + b"1\nx")

        assert (
            reply
            == b"2\x00ProtocolError\x00\x00Argument not in work volumes\x00"
        )
