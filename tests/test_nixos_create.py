# SPDX-License-Identifier: MIT
"""Qube creation from a NixOS template on the simulated qubesd."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusd.errors import BadArgument
from nexusd.nixos import marks
from nexusd.nixos.errors import NotNixosTemplate, Unsupported
from nexusd.qubes.errors import (
    InvalidValue,
    NoSuchQube,
    QubeExists,
    QubesError,
)
from nexusd.qubes.socket_port import SocketPort
from tests.nixos_helpers import open_dom0


@pytest.fixture
async def dom0(tmp_path: Path):
    async with open_dom0(tmp_path) as machine:
        yield machine


class TestCreate:
    async def test_qube_is_a_tagged_guest_with_the_agent(self, dom0) -> None:
        """If the template is NixOS, the qube is created from it, tagged as
        a nexus guest owned by nexusd, with the agent's service on."""
        result = await dom0.service.create_qube(
            name="web", template="nixos-25.05", label="green"
        )

        qube = dom0.qube("web")
        assert (qube.klass, qube.get("template")) == ("AppVM", "nixos-25.05")
        assert qube.get("label") == "green"
        assert {"nexus-guest", "nexus-owned"} <= qube.tags
        assert qube.features[marks.AGENT_SERVICE] == "1"
        assert result["tags"] == ["nexus-owned", "nexus-guest"]

    async def test_quota_and_netvm_are_set(self, dom0) -> None:
        """If a quota and a netvm are given, the quota feature and the netvm
        property are set."""
        await dom0.service.create_qube(
            name="web",
            template="nixos-25.05",
            label="green",
            netvm="sys-net",
            quota=7,
        )

        qube = dom0.qube("web")
        assert qube.features["nexus.max-containers"] == "7"
        assert qube.get("netvm") == "sys-net"

    async def test_empty_netvm_means_no_network(self, dom0) -> None:
        """If netvm is "", the qube has no network qube."""
        await dom0.service.create_qube(
            name="web", template="nixos-25.05", label="green", netvm=""
        )

        assert dom0.qube("web").get_or_none("netvm") is None

    async def test_dispvm_template_serves_disposables(self, dom0) -> None:
        """If the class is DispVM-template, the AppVM gets
        template_for_dispvms."""
        await dom0.service.create_qube(
            name="nixos-dvm",
            template="nixos-25.05",
            label="red",
            klass="DispVM-template",
        )

        qube = dom0.qube("nixos-dvm")
        assert qube.klass == "AppVM"
        assert qube.get("template_for_dispvms") is True

    async def test_creation_is_in_the_audit_trail(self, dom0) -> None:
        """If a qube is created, one audit record names it and its class."""
        await dom0.service.create_qube(
            name="web", template="nixos-25.05", label="green"
        )

        [(action, qube, obj, detail)] = dom0.audit_rows()
        assert (action, qube, obj) == ("qube_created", "web", "AppVM")
        assert detail["template"] == "nixos-25.05"


class TestRefusal:
    async def test_template_that_is_not_nixos_is_refused(self, dom0) -> None:
        """If the template is not NixOS, creation is refused with
        not_nixos_template and no qube is made."""
        with pytest.raises(NotNixosTemplate) as caught:
            await dom0.service.create_qube(
                name="web", template="fedora-42", label="green"
            )

        assert caught.value.code == "not_nixos_template"
        assert dom0.qube("web") is None
        assert dom0.audit_rows() == []

    async def test_appvm_as_template_is_refused(self, dom0) -> None:
        """If the template named is an AppVM (even a NixOS one), creation
        is refused."""
        with pytest.raises(NotNixosTemplate):
            await dom0.service.create_qube(
                name="web", template="work", label="green"
            )

        assert dom0.qube("web") is None

    async def test_existing_name_is_refused_and_untouched(self, dom0) -> None:
        """If the name is taken, creation is refused and that qube keeps
        its tags and features."""
        tags = set(dom0.qube("personal").tags)
        features = dict(dom0.qube("personal").features)

        with pytest.raises(QubeExists) as caught:
            await dom0.service.create_qube(
                name="personal", template="nixos-25.05", label="green"
            )

        assert caught.value.code == "qube_exists"
        assert dom0.qube("personal").tags == tags
        assert dom0.qube("personal").features == features

    async def test_missing_template_is_refused(self, dom0) -> None:
        """If the template does not exist, no_such_qube."""
        with pytest.raises(NoSuchQube):
            await dom0.service.create_qube(
                name="web", template="nixos-99", label="green"
            )

        assert dom0.qube("web") is None

    async def test_missing_netvm_is_refused_before_creation(self, dom0) -> None:
        """If the netvm does not exist, creation is refused and no qube
        was made (rather than made and removed)."""
        with pytest.raises(NoSuchQube):
            await dom0.service.create_qube(
                name="web",
                template="nixos-25.05",
                label="green",
                netvm="sys-nothing",
            )

        assert dom0.qube("web") is None

    async def test_unknown_label_leaves_no_qube(self, dom0) -> None:
        """If qubesd refuses the label, its error is raised and no qube is
        left."""
        with pytest.raises(QubesError) as caught:
            await dom0.service.create_qube(
                name="web", template="nixos-25.05", label="mauve"
            )

        assert "label" in caught.value.message
        assert dom0.qube("web") is None

    async def test_standalone_is_not_supported_yet(self, dom0) -> None:
        """If the class is StandaloneVM, not_supported and no qube."""
        with pytest.raises(Unsupported) as caught:
            await dom0.service.create_qube(
                name="web",
                template="nixos-25.05",
                label="green",
                klass="StandaloneVM",
            )

        assert caught.value.code == "not_supported"
        assert dom0.qube("web") is None

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("name", "-web"),
            ("name", "a" * 32),
            ("template", "nixos 25"),
            ("label", ""),
            ("netvm", "sys net"),
            ("klass", "TemplateVM"),
            ("quota", 0),
            ("quota", 1001),
            ("quota", True),
            ("quota", "7"),
        ],
    )
    async def test_bad_argument_creates_nothing(
        self, dom0, field: str, value: object
    ) -> None:
        """If an argument breaks its grammar, bad_argument and nothing is
        asked of qubesd."""
        args = {"name": "web", "template": "nixos-25.05", "label": "green"}
        args[field] = value
        before = set(dom0.model.domains)

        with pytest.raises(BadArgument) as caught:
            await dom0.service.create_qube(**args)

        assert caught.value.code == "bad_argument"
        assert set(dom0.model.domains) == before


class _FeatureRefusingPort(SocketPort):
    """The real port, except that qubesd "refuses" every feature."""

    async def set_feature(self, qube: str, name: str, value: str) -> None:
        raise InvalidValue(f"feature {name} refused")


class TestUndo:
    async def test_qube_is_removed_when_a_later_step_fails(self, dom0) -> None:
        """If the qube was created but could not be finished, it is removed
        and the error of the failed step is raised."""
        dom0.service.port = _FeatureRefusingPort(
            dom0.layout.qubesd_socket, sim_root=dom0.root
        )

        with pytest.raises(InvalidValue) as caught:
            await dom0.service.create_qube(
                name="web", template="nixos-25.05", label="green"
            )

        assert "refused" in caught.value.message
        assert dom0.qube("web") is None
        assert dom0.audit_rows() == []
