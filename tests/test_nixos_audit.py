# SPDX-License-Identifier: MIT
"""The audit of non-NixOS qubes on ``nexus-sim init``'s machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nixos_helpers import open_dom0


@pytest.fixture
async def dom0(tmp_path: Path):
    async with open_dom0(tmp_path) as machine:
        yield machine


def names(records: list[dict]) -> list[str]:
    return [r["name"] for r in records]


class TestAudit:
    async def test_fedora_qubes_are_not_nixos(self, dom0) -> None:
        """If qubes are based on fedora-42, the audit lists them as not
        NixOS, with their template and its distribution."""
        report = await dom0.service.audit()

        assert names(report["not_nixos"]) == [
            "default-dvm",
            "personal",
            "sys-firewall",
            "sys-net",
        ]
        assert {
            (r["template"], r["distribution"]) for r in report["not_nixos"]
        } == {("fedora-42", "fedora")}

    async def test_nixos_qubes_are_listed_as_such(self, dom0) -> None:
        """If qubes are based on nixos-25.05, they are listed as NixOS."""
        report = await dom0.service.audit()

        assert names(report["nixos"]) == ["db", "work"]

    async def test_dom0_and_templates_are_apart(self, dom0) -> None:
        """If the machine is audited, dom0 and the templates are listed in
        their own sections, never among the qubes."""
        report = await dom0.service.audit()

        assert names(report["dom0"]) == ["dom0"]
        assert names(report["templates"]) == [
            "fedora-42",
            "nixos-25.05",
            "whonix-gw-17",
            "whonix-ws-17",
        ]
        listed = names(report["nixos"] + report["not_nixos"] + report["exempt"])
        assert not {"dom0", "fedora-42", "nixos-25.05"} & set(listed)

    async def test_whonix_templates_are_exempt(self, dom0) -> None:
        """If a template is Whonix, it is marked exempt with the mark it
        went by."""
        report = await dom0.service.audit()

        exempt = {t["name"]: t["exempt"] for t in report["templates"]}
        assert exempt == {
            "fedora-42": None,
            "nixos-25.05": None,
            "whonix-gw-17": "os-distribution=whonix",
            "whonix-ws-17": "os-distribution=whonix",
        }

    async def test_qube_based_on_whonix_is_exempt(self, dom0) -> None:
        """If an AppVM and a disposable are based on a Whonix template, they
        are exempt, not reported as not NixOS."""
        dom0.model.create("AppVM", "anon", "red", "whonix-ws-17")
        dom0.model.set_property(dom0.qube("anon"), "template_for_dispvms", True)
        dom0.model.create("DispVM", "disp1", "red", "anon")

        report = await dom0.service.audit()

        assert names(report["exempt"]) == ["anon", "disp1"]
        assert {r["reason"] for r in report["exempt"]} == {
            "os-distribution=whonix"
        }

    async def test_defaults_say_whether_they_are_nixos(self, dom0) -> None:
        """If the defaults are fedora-based, the audit says they are not
        NixOS; once default_template is NixOS, it says so."""
        before = await dom0.service.audit()
        dom0.model.set_property(
            dom0.model.globals, "default_template", "nixos-25.05"
        )
        after = await dom0.service.audit()

        assert before["defaults"]["default_template"] == {
            "value": "fedora-42",
            "nixos": False,
        }
        assert before["defaults"]["default_dispvm"]["nixos"] is False
        assert after["defaults"]["default_template"]["nixos"] is True

    async def test_audit_changes_nothing(self, dom0) -> None:
        """If the audit runs, the machine's state file is unchanged."""
        before = dom0.layout.state_file.read_bytes()

        await dom0.service.audit()

        assert dom0.layout.state_file.read_bytes() == before
