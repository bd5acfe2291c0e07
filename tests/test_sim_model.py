# SPDX-License-Identifier: MIT
"""The simulated qubesd model: qubesd's rules, events and persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexusd.sim import lifecycle
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import build_capture_machine, build_demo_machine
from nexusd.sim.model import Dom0Model, system_info_from_file
from nexusd.sim.propcheck import sanitize
from nexusd.sim.qubesexc import (
    PermissionDenied,
    QubesInvalidTagError,
    QubesLabelNotFoundError,
    QubesPropertyValueError,
    QubesValueError,
    QubesVMAlreadyExistsError,
    QubesVMInUseError,
    QubesVMNotHaltedError,
    QubesVMNotStartedError,
)


@pytest.fixture
def model(tmp_path: Path) -> Dom0Model:
    return build_capture_machine(SimLayout(tmp_path))


@pytest.fixture
def demo(tmp_path: Path) -> Dom0Model:
    return build_demo_machine(SimLayout(tmp_path))


def record(model: Dom0Model) -> list[tuple[str | None, str, dict[str, str]]]:
    events: list[tuple[str | None, str, dict[str, str]]] = []
    model.subscribe(lambda s, e, k: events.append((s, e, k)))
    return events


class TestCreate:
    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("a" * 32, "VM name must be shorter than 32 characters"),
            (
                "1abc",
                "VM name cannot start with hyphen, underscore, dot or numbers",
            ),
            (
                "_abc",
                "VM name cannot start with hyphen, underscore, dot or numbers",
            ),
            ("bad name", "VM name contains illegal characters"),
            ("lost+found", "VM name contains illegal characters"),
            ("Domain-0", "VM name cannot be 'Domain-0'"),
            ("none", "VM name cannot be 'none' nor 'default'"),
            ("default", "VM name cannot be 'none' nor 'default'"),
            ("work-dm", "VM name cannot end with -dm"),
        ],
    )
    def test_bad_name_is_refused_and_nothing_stored(
        self, model: Dom0Model, name: str, message: str
    ) -> None:
        """If a name breaks qubesd's grammar, QubesValueError carries its
        message and the state file is untouched."""
        before = model.layout.state_file.read_bytes()

        with pytest.raises(QubesValueError) as info:
            model.create("AppVM", name, "red", "nixos-25.05")

        assert str(info.value) == message
        assert model.layout.state_file.read_bytes() == before

    def test_name_of_31_characters_is_accepted(self, model: Dom0Model) -> None:
        """If a name is exactly 31 characters, it is a valid qube name."""
        name = "a" * 31

        model.create("AppVM", name, "red", "nixos-25.05")

        assert name in Dom0Model.load(model.layout).domains

    def test_taken_name_is_refused(self, model: Dom0Model) -> None:
        """If the name is taken, QubesVMAlreadyExistsError is raised."""
        with pytest.raises(QubesVMAlreadyExistsError) as info:
            model.create("AppVM", "work", "red", "nixos-25.05")

        assert str(info.value) == "Qube already exists: work"

    def test_template_must_be_a_template(self, model: Dom0Model) -> None:
        """If an AppVM's template is an AppVM, qubesd's wrong-class error is
        raised and no qube appears."""
        with pytest.raises(QubesPropertyValueError) as info:
            model.create("AppVM", "new", "red", "work")

        assert "is of type AppVM and not TemplateVM" in str(info.value)
        assert "new" not in model.domains

    def test_unknown_label_is_refused(self, model: Dom0Model) -> None:
        """If the label does not exist, QubesLabelNotFoundError is raised."""
        with pytest.raises(QubesLabelNotFoundError):
            model.create("AppVM", "new", "mauve", "nixos-25.05")

        assert "new" not in model.domains

    def test_created_qube_is_tagged_with_its_creator(
        self, model: Dom0Model
    ) -> None:
        """If a qube is created, it gets ``created-by-<source>`` plus the
        guivm/audiovm tags, and domain-add comes before the tag event."""
        events = record(model)

        qube = model.create(
            "AppVM", "new", "green", "nixos-25.05", source="dom0"
        )

        assert qube.tags == {"created-by-dom0", "guivm-dom0", "audiovm-dom0"}
        assert [e[1] for e in events] == [
            "domain-add",
            "domain-tag-add:created-by-dom0",
            "domain-create-on-disk",
        ]
        assert events[0] == (None, "domain-add", {"vm": "new"})

    def test_default_template_is_used_without_one(
        self, model: Dom0Model
    ) -> None:
        """If no template is given, the global default_template is used."""
        qube = model.create("AppVM", "new", "green")

        assert qube.get("template") == "nixos-25.05"


class TestTags:
    def test_created_by_tag_only_from_dom0(self, model: Dom0Model) -> None:
        """If a qube other than dom0 changes a created-by-* tag, the change is
        PermissionDenied and nothing is stored."""
        before = model.layout.state_file.read_bytes()

        with pytest.raises(PermissionDenied):
            model.add_tag(model.domains["db"], "created-by-work", source="work")

        assert "created-by-work" not in model.domains["db"].tags
        assert model.layout.state_file.read_bytes() == before

    def test_created_by_tag_from_dom0_is_allowed(
        self, model: Dom0Model
    ) -> None:
        """If dom0 sets a created-by-* tag, it is set."""
        model.add_tag(model.domains["db"], "created-by-work", source="dom0")

        assert "created-by-work" in model.domains["db"].tags

    @pytest.mark.parametrize("tag", ["", "a b", "tag!", "ta.g"])
    def test_invalid_tag_is_refused(self, model: Dom0Model, tag: str) -> None:
        """If a tag breaks ``[A-Za-z0-9_-]+``, QubesInvalidTagError."""
        with pytest.raises(QubesInvalidTagError):
            model.add_tag(model.domains["db"], tag)

    def test_adding_present_tag_fires_nothing(self, model: Dom0Model) -> None:
        """If a tag is already there, adding it again fires no event."""
        model.add_tag(model.domains["db"], "x")
        events = record(model)

        model.add_tag(model.domains["db"], "x")

        assert events == []


class TestFeatures:
    @pytest.mark.parametrize(
        "name",
        [
            "deferred-netvm-original",
            "preload-dispvm",
            "preload-dispvm-completed",
            "preload-dispvm-in-progress",
        ],
    )
    def test_prohibited_feature_is_refused_through_the_api(
        self, model: Dom0Model, name: str
    ) -> None:
        """If an API caller sets a prohibited feature, PermissionDenied with
        qubesd's message, and nothing is stored."""
        with pytest.raises(PermissionDenied) as info:
            model.set_feature(model.domains["work"], name, "1", source="dom0")

        assert "prohibited by qubes.ext.admin.AdminExtension" in str(info.value)
        assert name not in model.domains["work"].features

    def test_service_name_over_48_is_refused(self, model: Dom0Model) -> None:
        """If a service.* feature name is over 48 bytes, QubesValueError."""
        with pytest.raises(QubesValueError):
            model.set_feature(model.domains["work"], "service." + "a" * 49, "1")

    def test_changed_feature_event_has_old_value(
        self, model: Dom0Model
    ) -> None:
        """If a feature changes, the set events carry oldvalue."""
        qube = model.domains["work"]
        model.set_feature(qube, "f", "1")
        events = record(model)

        model.set_feature(qube, "f", "2")

        assert events[-1] == (
            "work",
            "domain-feature-set:f",
            {"feature": "f", "value": "2", "oldvalue": "1"},
        )


class TestRemove:
    def test_running_qube_cannot_be_removed(self, model: Dom0Model) -> None:
        """If the qube runs, QubesVMNotHaltedError and it stays."""
        qube = model.domains["db"]
        lifecycle.start(model, qube)

        with pytest.raises(QubesVMNotHaltedError):
            model.remove(qube)

        assert "db" in Dom0Model.load(model.layout).domains

    def test_template_in_use_cannot_be_removed(self, model: Dom0Model) -> None:
        """If qubes use the template, qubesd's in-use message, and the
        pre-delete event has already gone out (as in qubesd)."""
        events = record(model)

        with pytest.raises(QubesVMInUseError) as info:
            model.remove(model.domains["nixos-25.05"])

        assert str(info.value).startswith("Domain is in use: 'nixos-25.05';")
        assert [e[1] for e in events] == ["domain-pre-delete"]
        assert "nixos-25.05" in model.domains

    def test_netvm_in_use_cannot_be_removed(self, demo: Dom0Model) -> None:
        """If a qube's explicit netvm is the qube, it cannot be removed."""
        with pytest.raises(QubesVMInUseError):
            demo.remove(demo.domains["sys-net"])

    def test_global_default_cannot_be_removed(self, demo: Dom0Model) -> None:
        """If a global property (default_dispvm) names the qube, it stays."""
        with pytest.raises(QubesVMInUseError):
            demo.remove(demo.domains["default-dvm"])

    def test_dom0_cannot_be_removed(self, model: Dom0Model) -> None:
        """If dom0 is asked to go, QubesVMInUseError."""
        with pytest.raises(QubesVMInUseError) as info:
            model.remove(model.domains["dom0"])

        assert str(info.value) == "'dom0' cannot be removed"

    def test_removed_qube_is_gone_from_disk_state(
        self, model: Dom0Model
    ) -> None:
        """If a free, halted qube is removed, the saved state lacks it and
        the delete events fire."""
        model.create("AppVM", "gone", "red")
        events = record(model)

        model.remove(model.domains["gone"])

        assert "gone" not in Dom0Model.load(model.layout).domains
        assert [e[1] for e in events] == ["domain-pre-delete", "domain-delete"]


class TestProperties:
    def test_label_change_resets_icon_between_events(
        self, model: Dom0Model
    ) -> None:
        """If a label changes, property-reset:icon comes between the pre-set
        and the set events, as in qubesd."""
        events = record(model)

        model.set_property(model.domains["db"], "label", "orange")

        assert [e[1] for e in events] == [
            "property-pre-set:label",
            "property-reset:icon",
            "property-set:label",
        ]

    def test_reset_fires_reset_and_deprecated_del(
        self, model: Dom0Model
    ) -> None:
        """If a property is reset, pre-reset, pre-del, reset, del fire."""
        qube = model.domains["work"]
        model.set_property(qube, "memory", 600)
        events = record(model)

        model.reset_property(qube, "memory")

        assert [e[1] for e in events] == [
            "property-pre-reset:memory",
            "property-pre-del:memory",
            "property-reset:memory",
            "property-del:memory",
        ]
        assert qube.is_default("memory")

    def test_negative_memory_is_refused(self, model: Dom0Model) -> None:
        """If memory is set to 0, qubesd's positive-int error."""
        with pytest.raises(QubesPropertyValueError) as info:
            model.set_property(model.domains["work"], "memory", 0)

        assert str(info.value) == "memory must be positive"

    @pytest.mark.parametrize(
        ("payload", "value"),
        [(b"on", True), (b"No", False), (b"1", True), (b"false", False)],
    )
    def test_bool_literals_parse(
        self, model: Dom0Model, payload, value
    ) -> None:
        """If a bool property gets one of qubesd's literals, it parses."""
        prop = model.domains["work"].PROPS["autostart"]

        assert sanitize(prop, payload) is value

    def test_netvm_must_provide_network(self, demo: Dom0Model) -> None:
        """If the new netvm does not provide network, QubesValueError."""
        with pytest.raises(QubesValueError) as info:
            demo.set_property(demo.domains["work"], "netvm", "personal")

        assert str(info.value) == "The personal qube does not provide network"

    def test_networked_qube_gets_ip_from_qid(self, demo: Dom0Model) -> None:
        """If a qube has a netvm, its ip is 10.137.0.<qid>."""
        qube = demo.domains["work"]

        assert qube.get("ip") == f"10.137.0.{qube.get('qid')}"
        assert qube.get("visible_gateway") == demo.domains["sys-firewall"].get(
            "ip"
        )


class TestPower:
    def test_start_fires_qubesd_sequence_and_starts_netvm(
        self, demo: Dom0Model
    ) -> None:
        """If a qube starts, its netvm chain starts first and domain-start
        closes its sequence."""
        events = record(demo)

        lifecycle.start(demo, demo.domains["work"])

        started = [s for s, e, _ in events if e == "domain-start"]
        assert started == ["sys-net", "sys-firewall", "work"]
        assert events[0] == (
            "work",
            "domain-pre-start",
            {"start_guid": "True", "mem_required": "None"},
        )

    def test_shutdown_of_halted_qube_is_refused(self, model: Dom0Model) -> None:
        """If a halted qube is shut down, QubesVMNotStartedError."""
        with pytest.raises(QubesVMNotStartedError):
            lifecycle.shutdown(model, model.domains["work"])

    def test_netvm_with_running_clients_refuses_shutdown(
        self, demo: Dom0Model
    ) -> None:
        """If running qubes use a netvm, it refuses shutdown without force."""
        lifecycle.start(demo, demo.domains["work"])

        with pytest.raises(QubesVMInUseError):
            lifecycle.shutdown(demo, demo.domains["sys-firewall"])

        assert demo.domains["sys-firewall"].is_running()

    def test_shutdown_ends_with_stopped_then_shutdown(
        self, model: Dom0Model
    ) -> None:
        """If a qube shuts down, domain-stopped then domain-shutdown fire."""
        qube = model.domains["work"]
        lifecycle.start(model, qube)
        events = record(model)

        lifecycle.shutdown(model, qube)

        assert [e[1] for e in events][-2:] == [
            "domain-stopped",
            "domain-shutdown",
        ]
        assert events[0][1] == "domain-pre-shutdown"
        assert qube.power_state == "Halted"


class TestPersistence:
    def test_state_round_trips(self, demo: Dom0Model) -> None:
        """If the machine is saved and loaded, the same state comes back."""
        demo.set_feature(demo.domains["work"], "x", "y")

        loaded = Dom0Model.load(demo.layout)

        assert loaded.system_info() == demo.system_info()
        assert loaded.domains["work"].features == demo.domains["work"].features

    def test_save_leaves_no_temporary_file(self, demo: Dom0Model) -> None:
        """If the state is saved, only the state file is left."""
        demo.save()

        assert not list(demo.layout.root.glob(".qubes.json*"))

    def test_unknown_version_is_refused(self, demo: Dom0Model) -> None:
        """If the state file has another version, load refuses it."""
        data = json.loads(demo.layout.state_file.read_text())
        data["version"] = 99
        demo.layout.state_file.write_text(json.dumps(data))

        with pytest.raises(ValueError, match="unsupported state version"):
            Dom0Model.load(demo.layout)

    def test_system_info_from_file_has_qrexec_keys(
        self, demo: Dom0Model
    ) -> None:
        """If another process reads the state file, it gets qrexec's
        system_info shape."""
        info = system_info_from_file(demo.layout)

        work = info["domains"]["work"]
        assert set(work) == {
            "internal",
            "tags",
            "type",
            "template_for_dispvms",
            "default_dispvm",
            "icon",
            "label",
            "guivm",
            "relayvm",
            "transport_rpc",
            "power_state",
            "uuid",
        }
        assert "nexus-guest" in work["tags"]
        assert work["default_dispvm"] == "default-dvm"
        assert info["domains"]["dom0"]["type"] == "AdminVM"
