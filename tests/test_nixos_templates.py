# SPDX-License-Identifier: MIT
"""Template import against the simulated qubesd: streamed, verified, undone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest

from nexusd.config import load_config
from nexusd.errors import BadArgument
from nexusd.nixos import marks
from nexusd.nixos.errors import ImageMismatch, ImageUnreadable
from nexusd.nixos.service import NixosService
from nexusd.qubes.errors import DaemonUnavailable, QubeExists
from nexusd.qubes.socket_port import SocketPort
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from nexusd.sim.model import Dom0Model
from nexusd.store import Store
from tests.nixos_helpers import IMAGE_SIZE, make_image, open_dom0
from tests.procs import start_qubesd, stop


@pytest.fixture
async def dom0(tmp_path: Path):
    async with open_dom0(tmp_path) as machine:
        yield machine


class TestImport:
    async def test_image_becomes_the_root_volume(self, dom0) -> None:
        """If the image has the given hash, it is the new template's root
        volume, byte for byte, and the result gives its hash and size."""
        image, digest = make_image(dom0.tmp)

        result = await dom0.service.import_template(
            name="nixos-new", image=str(image), sha256=digest.upper()
        )

        root = dom0.volume_dir("nixos-new") / "root.img"
        assert root.read_bytes() == image.read_bytes()
        assert (result["sha256"], result["size"]) == (digest, IMAGE_SIZE)
        assert dom0.qube("nixos-new").klass == "TemplateVM"

    async def test_template_gets_nixos_features_and_marks(self, dom0) -> None:
        """If an import succeeds, the template is tagged as nexusd's, has
        the features of a NixOS template and records the image."""
        image, digest = make_image(dom0.tmp)

        await dom0.service.import_template(
            name="nixos-new", image=str(image), sha256=digest
        )

        qube = dom0.qube("nixos-new")
        assert "nexus-owned" in qube.tags
        assert {
            "os": "Linux",
            "os-distribution": "nixos",
            "qrexec": "1",
            "gui": "1",
            marks.IMAGE_SHA256: digest,
            marks.IMAGE_SIZE: str(IMAGE_SIZE),
            marks.IMAGE_STATE: marks.STATE_COMPLETE,
        }.items() <= qube.features.items()

    async def test_import_is_in_the_audit_trail(self, dom0) -> None:
        """If an import succeeds, one audit record names the template, the
        image's hash and its size."""
        image, digest = make_image(dom0.tmp)

        await dom0.service.import_template(name="nixos-new", image=str(image))

        [(action, qube, obj, detail)] = dom0.audit_rows()
        assert (action, qube, obj) == ("template_imported", "nixos-new", "root")
        assert (detail["sha256"], detail["size"]) == (digest, IMAGE_SIZE)

    async def test_options_set_virt_mode_kernel_and_gui(self, dom0) -> None:
        """If virt_mode, kernel and gui are given, the template gets them."""
        image, _ = make_image(dom0.tmp)

        await dom0.service.import_template(
            name="nixos-new",
            image=str(image),
            virt_mode="hvm",
            kernel="",
            gui=False,
        )

        qube = dom0.qube("nixos-new")
        assert qube.get("virt_mode") == "hvm"
        assert qube.get("kernel") == ""
        assert qube.features["gui"] == "0"

    async def test_progress_counts_up_to_the_size(self, dom0) -> None:
        """If a progress callable is given, it sees the bytes sent grow to
        the image's size, with the size as total."""
        image, _ = make_image(dom0.tmp)
        seen: list[tuple[int, int]] = []

        await dom0.service.import_template(
            name="nixos-new",
            image=str(image),
            progress=lambda done, total: seen.append((done, total)),
        )

        dones = [done for done, _ in seen]
        assert dones == sorted(dones)
        assert seen[0] == (0, IMAGE_SIZE)
        assert seen[-1] == (IMAGE_SIZE, IMAGE_SIZE)
        assert {total for _, total in seen} == {IMAGE_SIZE}


class TestRefusal:
    async def test_wrong_hash_leaves_nothing_behind(self, dom0) -> None:
        """If the image's sha256 is not the one given, the import is
        refused and no template, volume file or folder is left."""
        image, _ = make_image(dom0.tmp)

        with pytest.raises(ImageMismatch) as caught:
            await dom0.service.import_template(
                name="nixos-bad", image=str(image), sha256="0" * 64
            )

        assert caught.value.code == "image_mismatch"
        assert dom0.qube("nixos-bad") is None
        assert not (dom0.root / "vms" / "nixos-bad").exists()
        assert "nixos-bad" not in Dom0Model.load(dom0.layout).domains

    async def test_wrong_hash_is_recorded_as_refused(self, dom0) -> None:
        """If the hash is wrong, the audit trail records a refusal (and no
        import)."""
        image, _ = make_image(dom0.tmp)

        with pytest.raises(ImageMismatch):
            await dom0.service.import_template(
                name="nixos-bad", image=str(image), sha256="0" * 64
            )

        [(action, qube, _, detail)] = dom0.audit_rows()
        assert (action, qube) == ("template_import_refused", "nixos-bad")
        assert detail["removed"] is True

    async def test_existing_name_is_refused_and_untouched(self, dom0) -> None:
        """If a qube of that name exists, the import is refused before any
        change: its features, tags and volumes stay as they were."""
        image, _ = make_image(dom0.tmp)
        before = dict(dom0.qube("fedora-42").features)
        tags = set(dom0.qube("fedora-42").tags)

        with pytest.raises(QubeExists) as caught:
            await dom0.service.import_template(
                name="fedora-42", image=str(image)
            )

        assert caught.value.code == "qube_exists"
        assert dom0.qube("fedora-42").features == before
        assert dom0.qube("fedora-42").tags == tags
        assert not (dom0.volume_dir("fedora-42") / "root.img").exists()
        assert dom0.audit_rows() == []

    async def test_missing_image_creates_nothing(self, dom0) -> None:
        """If the image cannot be opened, no template is created."""
        with pytest.raises(ImageUnreadable) as caught:
            await dom0.service.import_template(
                name="nixos-new", image=str(dom0.tmp / "absent.img")
            )

        assert caught.value.code == "image_unreadable"
        assert dom0.qube("nixos-new") is None

    async def test_empty_image_creates_nothing(self, dom0) -> None:
        """If the image is empty, no template is created."""
        empty = dom0.tmp / "empty.img"
        empty.write_bytes(b"")

        with pytest.raises(ImageUnreadable):
            await dom0.service.import_template(
                name="nixos-new", image=str(empty)
            )

        assert dom0.qube("nixos-new") is None

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("name", "9starts-with-digit"),
            ("name", "x" * 32),
            ("name", "ends-dm"),
            ("name", "dom0 extra"),
            ("sha256", "abc"),
            ("sha256", "g" * 64),
            ("sha256", "é" * 64),
            ("virt_mode", "kvm"),
            ("kernel", "../../etc"),
            ("label", "bad label"),
            ("image", "relative/nixos.img"),
        ],
    )
    async def test_bad_argument_creates_nothing(
        self, dom0, field: str, value: str
    ) -> None:
        """If an argument breaks its grammar, the import is refused with
        bad_argument and qubesd is not asked to create anything."""
        image, _ = make_image(dom0.tmp)
        args = {"name": "nixos-new", "image": str(image), field: value}
        before = set(dom0.model.domains)

        with pytest.raises(BadArgument) as caught:
            await dom0.service.import_template(**args)

        assert caught.value.code == "bad_argument"
        assert set(dom0.model.domains) == before


class TestHalfMade:
    async def test_leftover_of_a_broken_import_is_replaced(self, dom0) -> None:
        """If a template of that name is one nexusd began and never
        finished, a new import removes it and succeeds."""
        dom0.model.create("TemplateVM", "nixos-new", "black")
        dom0.model.add_tag(dom0.qube("nixos-new"), "nexus-owned")
        dom0.model.set_feature(
            dom0.qube("nixos-new"), marks.IMAGE_STATE, marks.STATE_IMPORTING
        )
        image, digest = make_image(dom0.tmp)

        result = await dom0.service.import_template(
            name="nixos-new", image=str(image)
        )

        assert result["sha256"] == digest
        assert (
            dom0.qube("nixos-new").features[marks.IMAGE_STATE]
            == marks.STATE_COMPLETE
        )

    async def test_finished_template_is_not_replaced(self, dom0) -> None:
        """If the template of that name is complete, the import is refused
        even though nexusd owns it."""
        image, _ = make_image(dom0.tmp)
        await dom0.service.import_template(name="nixos-new", image=str(image))
        first = dom0.qube("nixos-new").get("uuid")

        with pytest.raises(QubeExists):
            await dom0.service.import_template(
                name="nixos-new", image=str(image)
            )

        assert dom0.qube("nixos-new").get("uuid") == first


@pytest.fixture
async def dom0_process(tmp_path: Path):
    """The simulated qubesd as a process the test can kill and restart."""
    root = tmp_path / "dom0"
    init_machine(root)
    procs = [start_qubesd(root)]
    config = load_config(None, sim_root=root)
    config.paths.state_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.database)
    port = SocketPort(SimLayout(root).qubesd_socket, sim_root=root)
    service = NixosService(port, config, store, retry_first=0.05)
    try:
        yield root, procs, service
    finally:
        await store.close()
        for proc in procs:
            if proc.poll() is None:
                stop(proc)


def _kill_at_first_chunk(procs: list) -> object:
    def progress(done: int, total: int) -> None:
        if done > 0 and procs[-1].poll() is None:
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait()

    return progress


class TestQubesdGoesAway:
    async def test_error_says_what_is_left(
        self, dom0_process, tmp_path
    ) -> None:
        """If qubesd dies during the import, the error is qubesd_unavailable
        and names the half-made template it could not remove."""
        root, procs, service = dom0_process
        image, _ = make_image(tmp_path)

        with pytest.raises(DaemonUnavailable) as caught:
            await service.import_template(
                name="nixos-new",
                image=str(image),
                progress=_kill_at_first_chunk(procs),
            )

        assert "'nixos-new' is left half-made" in caught.value.message
        left = Dom0Model.load(SimLayout(root)).domains["nixos-new"]
        assert left.features[marks.IMAGE_STATE] == marks.STATE_IMPORTING

    async def test_nothing_is_left_once_qubesd_is_back(
        self, dom0_process, tmp_path
    ) -> None:
        """If qubesd dies during the import and comes back, the background
        task removes the half-made template and its volumes."""
        root, procs, service = dom0_process
        image, _ = make_image(tmp_path)
        with pytest.raises(DaemonUnavailable):
            await service.import_template(
                name="nixos-new",
                image=str(image),
                progress=_kill_at_first_chunk(procs),
            )
        background = asyncio.create_task(service.run())

        procs.append(start_qubesd(root))
        await asyncio.wait_for(service.started.wait(), 10)
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background

        assert "nixos-new" not in Dom0Model.load(SimLayout(root)).domains
        assert not (root / "vms" / "nixos-new").exists()


class TestCancel:
    async def test_cancelled_import_leaves_nothing(self, dom0) -> None:
        """If the import is cancelled while it streams (CancelJob), the
        half-made template and its volumes are removed."""
        image, _ = make_image(dom0.tmp)
        tasks: list[asyncio.Task] = []

        def cancel_midway(done: int, total: int) -> None:
            if 0 < done < total:
                tasks[0].cancel()

        tasks.append(
            asyncio.create_task(
                dom0.service.import_template(
                    name="nixos-new", image=str(image), progress=cancel_midway
                )
            )
        )

        with pytest.raises(asyncio.CancelledError):
            await tasks[0]

        assert dom0.qube("nixos-new") is None
        assert not (dom0.root / "vms" / "nixos-new").exists()
