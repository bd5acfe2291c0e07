# SPDX-License-Identifier: MIT
"""diff and apply of the declared file against the simulated qubesd."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusd.errors import BadArgument
from nexusd.nixos.errors import DeclaredFileError
from tests.nixos_helpers import make_image, open_dom0


@pytest.fixture
async def dom0(tmp_path: Path):
    async with open_dom0(tmp_path) as machine:
        yield machine


async def owned_qube(dom0, name: str, label: str = "green") -> None:
    """A NixOS qube nexusd created (owned, guest, agent on)."""
    await dom0.service.create_qube(
        name=name, template="nixos-25.05", label=label
    )


def actions(result: dict) -> list[tuple[str, str, str]]:
    return [(c["qube"], c["action"], c["key"]) for c in result["changes"]]


class TestDrift:
    async def test_drifted_label_is_corrected(self, dom0) -> None:
        """If an owned qube's label drifted from the file, apply sets it
        back and a diff afterwards shows nothing to change."""
        await owned_qube(dom0, "web", label="green")
        dom0.declare('[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "blue"\n')

        result = await dom0.service.apply()

        assert dom0.qube("web").get("label") == "blue"
        assert result["converged"] is True
        assert (await dom0.service.diff())["changes"] == []

    async def test_diff_shows_the_drift_with_its_line(self, dom0) -> None:
        """If a label drifted, diff lists one change with the old value,
        the new one and the line of the key, and changes nothing."""
        await owned_qube(dom0, "web", label="green")
        dom0.declare(
            '\n[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "blue"\n'
        )

        result = await dom0.service.diff()

        assert result["changes"] == [
            {
                "qube": "web",
                "action": "set-property",
                "key": "label",
                "old": "green",
                "new": "blue",
                "line": 4,
            }
        ]
        assert dom0.qube("web").get("label") == "green"

    async def test_correction_is_in_the_audit_trail(self, dom0) -> None:
        """If apply corrects drift, each change is an audit record with the
        file's line."""
        await owned_qube(dom0, "web", label="green")
        dom0.declare('[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "blue"\n')

        await dom0.service.apply()

        action, qube, obj, detail = dom0.audit_rows()[-1]
        assert (action, qube, obj) == ("declared_set_property", "web", "label")
        assert (detail["old"], detail["new"], detail["line"]) == (
            "green",
            "blue",
            3,
        )

    async def test_missing_guest_tag_and_agent_are_restored(self, dom0) -> None:
        """If an owned declared qube lost the guest tag and the agent's
        service, apply restores both."""
        await owned_qube(dom0, "web")
        dom0.model.remove_tag(dom0.qube("web"), "nexus-guest")
        dom0.model.remove_feature(dom0.qube("web"), "service.nexus-agent")
        dom0.declare('[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "green"\n')

        await dom0.service.apply()

        assert "nexus-guest" in dom0.qube("web").tags
        assert dom0.qube("web").features["service.nexus-agent"] == "1"

    async def test_undeclared_properties_are_left_alone(self, dom0) -> None:
        """If an owned qube has properties and features the file does not
        name, apply leaves them as they are."""
        await owned_qube(dom0, "web")
        dom0.model.set_feature(dom0.qube("web"), "custom", "keep")
        dom0.model.set_property(dom0.qube("web"), "memory", 900)
        dom0.declare('[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "green"\n')

        result = await dom0.service.apply()

        assert result["applied"] == []
        assert dom0.qube("web").features["custom"] == "keep"
        assert dom0.qube("web").get("memory") == 900


class TestOwnership:
    async def test_unowned_qube_is_reported_and_untouched(self, dom0) -> None:
        """If a declared qube exists but nexusd does not own it, apply
        reports its drift and changes nothing on it."""
        before_tags = set(dom0.qube("work").tags)
        dom0.declare(
            '[qubes.work]\ntemplate = "nixos-25.05"\nlabel = "red"\n'
            'tags = ["web"]\n'
        )

        result = await dom0.service.apply()

        assert dom0.qube("work").get("label") == "blue"
        assert dom0.qube("work").tags == before_tags
        [report] = result["unowned"]
        assert report["qube"] == "work"
        assert {(d["action"], d["key"]) for d in report["drift"]} == {
            ("set-property", "label"),
            ("add-tag", "web"),
        }
        assert result["applied"] == []

    async def test_unowned_qube_is_not_removed(self, dom0) -> None:
        """If the file asks to remove a qube nexusd does not own, it stays
        and the report says so."""
        dom0.declare("[qubes.personal]\nremove = true\n")

        result = await dom0.service.apply()

        assert dom0.qube("personal") is not None
        assert result["unowned"][0]["remove"] is True

    async def test_owned_qube_is_removed_when_the_file_says_so(
        self, dom0
    ) -> None:
        """If the file says remove = true for a qube nexusd owns, it goes."""
        await owned_qube(dom0, "web")
        dom0.declare("[qubes.web]\nremove = true\n")

        result = await dom0.service.apply()

        assert dom0.qube("web") is None
        assert [(a["action"], a["ok"]) for a in result["applied"]] == [
            ("remove-qube", True)
        ]

    async def test_owned_qube_left_out_of_the_file_stays(self, dom0) -> None:
        """If an owned qube is not in the file, it is reported as
        undeclared and not removed."""
        await owned_qube(dom0, "web")
        dom0.declare("")

        result = await dom0.service.apply()

        assert dom0.qube("web") is not None
        assert result["undeclared"] == ["web"]


class TestCreation:
    async def test_missing_qube_is_created_and_converges(self, dom0) -> None:
        """If a declared qube is missing, apply creates it with its tags
        and properties, and a second diff is empty."""
        dom0.declare(
            '[qubes.api]\ntemplate = "nixos-25.05"\nlabel = "orange"\n'
            'netvm = ""\nquota = 3\ntags = ["api"]\n'
            "properties = { memory = 700 }\n"
        )

        first = await dom0.service.diff()
        await dom0.service.apply()
        second = await dom0.service.diff()

        assert ("api", "create-qube", "") in actions(first)
        qube = dom0.qube("api")
        assert {"api", "nexus-owned", "nexus-guest"} <= qube.tags
        assert qube.get("memory") == 700
        assert qube.get_or_none("netvm") is None
        assert qube.features["nexus.max-containers"] == "3"
        assert second["changes"] == []

    async def test_missing_template_is_imported_from_its_image(
        self, dom0
    ) -> None:
        """If a declared template is missing and has an image, apply
        imports it and then creates the qube based on it."""
        image, digest = make_image(dom0.tmp)
        dom0.declare(
            f'[templates."nixos-26.05"]\nimage = "{image}"\n'
            f'sha256 = "{digest}"\n\n'
            '[qubes.web]\ntemplate = "nixos-26.05"\nlabel = "green"\n'
        )

        result = await dom0.service.apply()

        assert result["converged"] is True
        assert dom0.qube("nixos-26.05").features["nexus.image-sha256"] == digest
        assert dom0.qube("web").get("template") == "nixos-26.05"

    async def test_qube_on_a_template_that_is_not_nixos_is_refused(
        self, dom0
    ) -> None:
        """If a declared qube's template is not NixOS, it is reported as a
        problem with its line and not created."""
        dom0.declare('[qubes.web]\ntemplate = "fedora-42"\nlabel = "green"\n')

        result = await dom0.service.apply()

        assert dom0.qube("web") is None
        [problem] = result["problems"]
        assert (problem["qube"], problem["line"]) == ("web", 2)
        assert "not a NixOS template" in problem["message"]

    async def test_one_failure_does_not_stop_the_others(self, dom0) -> None:
        """If one change fails, it is reported and the others are made."""
        await owned_qube(dom0, "web")
        dom0.declare(
            '[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "green"\n'
            "properties = { memory = 0, vcpus = 1 }\n"
        )

        result = await dom0.service.apply()

        outcome = {a["key"]: a["ok"] for a in result["applied"]}
        assert outcome == {"memory": False, "vcpus": True}
        assert dom0.qube("web").get("vcpus") == 1
        assert result["failed"] == 1


class TestFile:
    async def test_malformed_file_changes_nothing(self, dom0) -> None:
        """If the declared file is malformed, apply is refused with the line
        and nothing is created."""
        dom0.declare(
            '[qubes.web]\ntemplate = "nixos-25.05"\nlabel = "gr een"\n'
        )
        before = set(dom0.model.domains)

        with pytest.raises(DeclaredFileError) as caught:
            await dom0.service.apply()

        assert ":3: invalid label name" in caught.value.message
        assert set(dom0.model.domains) == before
        assert dom0.audit_rows() == []

    async def test_relative_path_is_refused(self, dom0) -> None:
        """If apply is given a relative path, bad_argument."""
        with pytest.raises(BadArgument) as caught:
            await dom0.service.diff(path="qubes.toml")

        assert caught.value.code == "bad_argument"


class TestDefaults:
    async def test_default_template_becomes_nixos(self, dom0) -> None:
        """If [system] names a NixOS template, apply makes it the system's
        default_template."""
        dom0.declare('[system]\ndefault_template = "nixos-25.05"\n')

        await dom0.service.apply()

        assert dom0.model.globals.get("default_template") == "nixos-25.05"

    async def test_default_template_must_be_nixos(self, dom0) -> None:
        """If [system] names a template that is not NixOS, it is a problem
        with its line and the default is unchanged."""
        dom0.declare('[system]\n\ndefault_template = "whonix-ws-17"\n')

        result = await dom0.service.apply()

        assert dom0.model.globals.get("default_template") == "fedora-42"
        assert result["problems"][0]["line"] == 3

    async def test_default_dispvm_becomes_a_nixos_disposable_template(
        self, dom0
    ) -> None:
        """If [system] names a declared NixOS disposable template, apply
        creates it and makes it default_dispvm."""
        dom0.declare(
            '[system]\ndefault_dispvm = "nixos-dvm"\n\n'
            '[qubes.nixos-dvm]\nclass = "DispVM-template"\n'
            'template = "nixos-25.05"\nlabel = "red"\n'
        )

        result = await dom0.service.apply()

        assert dom0.model.globals.get("default_dispvm") == "nixos-dvm"
        assert result["converged"] is True

    async def test_default_dispvm_based_on_fedora_is_refused(
        self, dom0
    ) -> None:
        """If [system] names a disposable template not based on NixOS, the
        default is unchanged."""
        dom0.declare('[system]\ndefault_dispvm = "default-dvm"\n')

        result = await dom0.service.apply()

        assert dom0.model.globals.get("default_dispvm") == "default-dvm"
        assert "NixOS" in result["problems"][0]["message"]


class TestHalfMade:
    async def test_half_made_template_is_imported_again(self, dom0) -> None:
        """If a declared template is one an import left half-made, diff
        plans its import and apply replaces it with a complete one."""
        dom0.model.create("TemplateVM", "nixos-26.05", "black")
        dom0.model.add_tag(dom0.qube("nixos-26.05"), "nexus-owned")
        dom0.model.set_feature(
            dom0.qube("nixos-26.05"), "nexus.image-state", "importing"
        )
        image, digest = make_image(dom0.tmp)
        dom0.declare(f'[templates."nixos-26.05"]\nimage = "{image}"\n')

        planned = await dom0.service.diff()
        await dom0.service.apply()

        assert actions(planned) == [("nixos-26.05", "import-template", "")]
        features = dom0.qube("nixos-26.05").features
        assert features["nexus.image-state"] == "complete"
        assert features["nexus.image-sha256"] == digest
