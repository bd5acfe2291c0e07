# SPDX-License-Identifier: MIT
"""The NixOS operations on a running daemon: registration, the start-up
apply, and the D-Bus job adapters."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nexusd.config import load_config
from nexusd.daemon import Daemon
from nexusd.dbus.jobs import JobContext
from nexusd.errors import BadArgument
from nexusd.nixos.jobs import JOB_NAMES, job_operations
from nexusd.qubes.socket_port import SocketPort
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from nexusd.sim.qubesd import serve_qubesd
from tests.nixos_helpers import IMAGE_SIZE, make_image, open_dom0

OPERATIONS = ("import_template", "create_qube", "apply", "diff", "audit")


@pytest.fixture
async def dom0(tmp_path: Path):
    async with open_dom0(tmp_path) as machine:
        yield machine


async def wait_until(condition, timeout: float = 10.0) -> None:
    """Wait for *condition* (no timing is asserted; the bound is a guard)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


class TestDaemon:
    async def test_operations_are_registered(self, tmp_path: Path) -> None:
        """If the daemon starts, its operations hold the five NixOS
        operations by name and under their D-Bus job names."""
        root = tmp_path / "dom0"
        model = init_machine(root)
        server = await serve_qubesd(model, SimLayout(root).qubesd_socket)
        config = load_config(None, sim_root=root)
        daemon = Daemon(config, port=SocketPort(config.paths.qubesd_socket))
        await daemon.start()
        try:
            names = set(daemon.operations)
            report = await daemon.operations["audit"]()
        finally:
            await daemon.stop()
            await server.close()

        assert set(OPERATIONS) | set(JOB_NAMES.values()) <= names
        assert [r["name"] for r in report["nixos"]] == ["db", "work"]

    async def test_declared_file_is_applied_at_start(
        self, tmp_path: Path
    ) -> None:
        """If a declared file exists when nexusd starts, an owned qube's
        drifted label is corrected in the background."""
        root = tmp_path / "dom0"
        model = init_machine(root)
        model.create("AppVM", "web", "green", "nixos-25.05")
        model.add_tag(model.domains["web"], "nexus-owned")
        config = load_config(None, sim_root=root)
        config.paths.declared_qubes.write_text(
            '[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "blue"\n'
        )
        server = await serve_qubesd(model, SimLayout(root).qubesd_socket)
        daemon = Daemon(config, port=SocketPort(config.paths.qubesd_socket))
        await daemon.start()
        try:
            await wait_until(lambda: "nexus-guest" in model.domains["web"].tags)
        finally:
            await daemon.stop()
            await server.close()

        assert model.domains["web"].get("label") == "blue"

    async def test_start_does_not_wait_for_qubesd(self, tmp_path: Path) -> None:
        """If qubesd is not there, the daemon still starts (READY is not
        held back by the start-up apply) and stops cleanly."""
        root = tmp_path / "dom0"
        init_machine(root)
        config = load_config(None, sim_root=root)
        config.paths.declared_qubes.write_text("")
        daemon = Daemon(config, port=SocketPort(config.paths.qubesd_socket))

        await daemon.start()
        await daemon.stop()

        assert "apply" in daemon.operations


def job(options: dict, image=None) -> tuple[JobContext, list[float]]:
    seen: list[float] = []
    context = JobContext(
        job_id="job-1",
        untrusted_options=options,
        actor="uid:0",
        via="dbus:test",
        image=image,
    )
    context._report = lambda fraction, message: seen.append(fraction)
    return context, seen


class TestJobs:
    async def test_import_takes_the_passed_file(self, dom0) -> None:
        """If ImportTemplate gets the image as an open file, it imports it,
        reports progress up to 1.0 and records the caller as actor."""
        image, digest = make_image(dom0.tmp)
        operations = job_operations(dom0.service)
        context, seen = job(
            {"name": "nixos-new", "sha256": digest}, image.open("rb")
        )

        result = await operations["ImportTemplate"](context)

        assert (result["sha256"], result["size"]) == (digest, IMAGE_SIZE)
        assert seen[-1] == 1.0
        assert dom0.audit_rows()[0][3]["image"] == str(image)

    async def test_create_maps_max_containers_to_the_quota(self, dom0) -> None:
        """If CreateQube gets max_containers and class, the qube has that
        quota and class."""
        operations = job_operations(dom0.service)
        context, _ = job(
            {
                "name": "web",
                "template": "nixos-25.05",
                "label": "green",
                "class": "DispVM-template",
                "max_containers": 2,
            }
        )

        await operations["CreateQube"](context)

        qube = dom0.qube("web")
        assert qube.features["nexus.max-containers"] == "2"
        assert qube.get("template_for_dispvms") is True

    @pytest.mark.parametrize(
        ("name", "options"),
        [
            ("CreateQube", {"name": "web", "template": "t", "colour": "x"}),
            ("CreateQube", {"name": "web", "template": "t", "label": 3}),
            ("CreateQube", {"name": "web", "label": "x"}),
            ("CreateQube", {"max_containers": True}),
            ("Apply", {"path": 7}),
            ("AuditQubes", {"verbose": True}),
        ],
        ids=[
            "unknown-key",
            "wrong-type",
            "no-template",
            "bool-as-int",
            "path-not-string",
            "audit-option",
        ],
    )
    async def test_bad_options_are_refused(
        self, dom0, name: str, options: dict
    ) -> None:
        """If a job's options are malformed, bad_argument and nothing is
        created."""
        operations = job_operations(dom0.service)
        before = set(dom0.model.domains)
        context, _ = job(options)

        with pytest.raises(BadArgument) as caught:
            await operations[name](context)

        assert caught.value.code == "bad_argument"
        assert set(dom0.model.domains) == before

    async def test_import_without_a_file_is_refused(self, dom0) -> None:
        """If ImportTemplate gets no file, bad_argument."""
        context, _ = job({"name": "nixos-new"})

        with pytest.raises(BadArgument):
            await job_operations(dom0.service)["ImportTemplate"](context)

        assert dom0.qube("nixos-new") is None
