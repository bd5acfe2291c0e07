# SPDX-License-Identifier: MIT
"""The container services end to end over nexusd's real socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import FakePort, call, db_rows, settle, start_daemon

SPEC = {
    "ports": [8080],
    "resources": {"memory_mb": 256, "cpu_weight": 100},
    "autostart": True,
    "config_sha256": "a" * 64,
}


@pytest.fixture
def port() -> FakePort:
    port = FakePort()
    port.add("work", guest=True)
    port.add("db", guest=True)
    port.add("personal")
    return port


@pytest.fixture
async def daemon(tmp_path: Path, port: FakePort):
    daemon = await start_daemon(tmp_path, port, containers_per_qube=3)
    yield daemon
    await daemon.stop()


class TestContainerCreate:
    async def test_guest_creates_container(self, daemon) -> None:
        """If a nexus guest asks, the container is stored and returned."""
        reply = await call(daemon, "nexus.ContainerCreate", "web", payload=SPEC)

        assert reply["ok"] is True
        record = reply["result"]["container"]
        assert record["qube"] == "work"
        assert record["name"] == "web"
        assert record["ports"] == [8080]
        assert record["resources"] == {"memory_mb": 256, "cpu_weight": 100}
        assert reply["result"]["created"] is True
        assert [r[1:4] for r in db_rows(daemon, "containers")] == [
            ("work", "uuid-work-1", "web")
        ]

    async def test_repeated_request_returns_same_record(self, daemon) -> None:
        """If the same request comes twice, the same record comes back."""
        first = await call(daemon, "nexus.ContainerCreate", "web", payload=SPEC)
        second = await call(
            daemon, "nexus.ContainerCreate", "web", payload=SPEC
        )

        assert second["result"]["created"] is False
        assert second["result"]["container"] == first["result"]["container"]
        assert len(db_rows(daemon, "containers")) == 1
        assert len(db_rows(daemon, "audit")) == 1

    async def test_different_spec_for_existing_name_conflicts(
        self, daemon
    ) -> None:
        """If the name exists with another spec, the code is conflict."""
        await call(daemon, "nexus.ContainerCreate", "web", payload=SPEC)

        reply = await call(
            daemon, "nexus.ContainerCreate", "web", payload={"ports": [1]}
        )

        assert reply["error"]["code"] == "conflict"
        assert len(db_rows(daemon, "containers")) == 1

    async def test_same_name_in_two_qubes_is_allowed(self, daemon) -> None:
        """If two qubes use one name, each gets its own container."""
        await call(daemon, "nexus.ContainerCreate", "web", source="work")
        reply = await call(daemon, "nexus.ContainerCreate", "web", source="db")

        assert reply["result"]["container"]["qube"] == "db"
        assert len(db_rows(daemon, "containers")) == 2

    async def test_unmanaged_qube_is_refused(self, daemon) -> None:
        """If the caller lacks the guest tag, not_managed, nothing stored."""
        reply = await call(
            daemon, "nexus.ContainerCreate", "web", source="personal"
        )

        assert reply["ok"] is False
        assert reply["error"]["code"] == "not_managed"
        assert db_rows(daemon, "containers") == []
        assert db_rows(daemon, "audit") == []

    async def test_quota_exceeded_is_refused(self, daemon) -> None:
        """If the qube is at its quota, quota_exceeded and nothing stored."""
        for name in ("a", "b", "c"):
            await call(daemon, "nexus.ContainerCreate", name)

        reply = await call(daemon, "nexus.ContainerCreate", "d")

        assert reply["error"]["code"] == "quota_exceeded"
        assert len(db_rows(daemon, "containers")) == 3

    async def test_quota_feature_raises_the_limit(self, daemon, port) -> None:
        """If the admin sets the quota feature, the qube's limit follows."""
        port.emit("work", "domain-feature-set:nexus.max-containers", value="4")
        await settle(daemon, port)
        for name in ("a", "b", "c", "d"):
            reply = await call(daemon, "nexus.ContainerCreate", name)
            assert reply["ok"], reply

        reply = await call(daemon, "nexus.ContainerCreate", "e")

        assert reply["error"]["code"] == "quota_exceeded"

    @pytest.mark.parametrize(
        "payload",
        [
            b"{",
            b"[]",
            b'{"ports": [80], "extra": 1}',
            b'{"ports": [0]}',
            b'{"ports": [65536]}',
            b'{"ports": [80, 80]}',
            b'{"ports": [true]}',
            b'{"ports": [80.5]}',
            b'{"ports": "80"}',
            b'{"ports": [80], "ports": [81]}',
            b'{"resources": {"memory_mb": 1}}',
            b'{"resources": {"disk": 1}}',
            b'{"autostart": "yes"}',
            b'{"config_sha256": "XYZ"}',
            b'{"ports": NaN}',
            b"\xff\xfe{}",
            b'{"a":' * 50 + b"1" + b"}" * 50,
        ],
    )
    async def test_bad_spec_is_refused(self, daemon, payload: bytes) -> None:
        """If the spec breaks its grammar, bad_payload and nothing stored."""
        reply = await call(
            daemon, "nexus.ContainerCreate", "web", payload=payload
        )

        assert reply["error"]["code"] == "bad_payload"
        assert db_rows(daemon, "containers") == []

    @pytest.mark.parametrize(
        "name", ["Web", "1web", "web-", "abcdefghijkl", "we_b", "w.b"]
    )
    async def test_bad_name_is_refused(self, daemon, name: str) -> None:
        """If the name breaks the container grammar, bad_argument."""
        reply = await call(daemon, "nexus.ContainerCreate", name)

        assert reply["error"]["code"] == "bad_argument"
        assert db_rows(daemon, "containers") == []

    async def test_target_other_than_dom0_is_refused(self, daemon) -> None:
        """If the caller named a qube as target, bad_header, nothing kept."""
        reply = await call(
            daemon, "nexus.ContainerCreate", "web", target="name db"
        )

        assert reply["error"]["code"] == "bad_header"
        assert db_rows(daemon, "containers") == []


class TestContainerRemove:
    async def test_owner_removes_container(self, daemon) -> None:
        """If the owner removes its container, it is gone."""
        await call(daemon, "nexus.ContainerCreate", "web")

        reply = await call(daemon, "nexus.ContainerRemove", "web")

        assert reply["result"] == {"removed": "web", "links_removed": 0}
        assert db_rows(daemon, "containers") == []

    async def test_other_qube_cannot_remove(self, daemon) -> None:
        """If another guest names the container, not_found, it stays."""
        await call(daemon, "nexus.ContainerCreate", "web", source="work")

        reply = await call(daemon, "nexus.ContainerRemove", "web", source="db")

        assert reply["error"]["code"] == "not_found"
        assert len(db_rows(daemon, "containers")) == 1

    async def test_payload_is_refused(self, daemon) -> None:
        """If Remove gets a payload, bad_payload and nothing removed."""
        await call(daemon, "nexus.ContainerCreate", "web")

        reply = await call(daemon, "nexus.ContainerRemove", "web", payload=b"x")

        assert reply["error"]["code"] == "bad_payload"
        assert len(db_rows(daemon, "containers")) == 1


class TestContainerListAndReport:
    async def test_list_shows_only_callers_containers(self, daemon) -> None:
        """If two qubes have containers, each lists only its own."""
        await call(daemon, "nexus.ContainerCreate", "web", source="work")
        await call(daemon, "nexus.ContainerCreate", "pg", source="db")

        reply = await call(daemon, "nexus.ContainerList", source="work")

        names = [c["name"] for c in reply["result"]["containers"]]
        assert names == ["web"]

    async def test_list_with_argument_is_refused(self, daemon) -> None:
        """If List gets an argument, bad_argument."""
        reply = await call(daemon, "nexus.ContainerList", "web")

        assert reply["error"]["code"] == "bad_argument"

    async def test_report_records_state(self, daemon) -> None:
        """If the guest reports running, the record says running."""
        await call(daemon, "nexus.ContainerCreate", "web")

        reply = await call(
            daemon,
            "nexus.ContainerReport",
            "web",
            payload={"state": "running", "message": "up 3s"},
        )

        assert reply["result"]["container"]["state"] == "running"
        assert reply["result"]["container"]["message"] == "up 3s"

    @pytest.mark.parametrize(
        "payload",
        [
            {"state": "exploded"},
            {"state": "running", "message": "a\nb"},
            {"state": "running", "message": "x" * 201},
            {"state": "running", "extra": 1},
        ],
    )
    async def test_bad_report_is_refused(self, daemon, payload) -> None:
        """If the report breaks its grammar, bad_payload, state unchanged."""
        await call(daemon, "nexus.ContainerCreate", "web")

        reply = await call(
            daemon, "nexus.ContainerReport", "web", payload=payload
        )

        assert reply["error"]["code"] == "bad_payload"
        assert db_rows(daemon, "containers")[0][6] == "requested"


class TestQubeLifetime:
    async def test_deleted_qube_loses_containers(self, daemon, port) -> None:
        """If a qube is deleted, its containers are removed."""
        await call(daemon, "nexus.ContainerCreate", "pg", source="db")
        await call(daemon, "nexus.ContainerCreate", "web", source="work")

        del port.qubes["db"]
        port.emit(None, "domain-delete", vm="db")
        await settle(daemon, port)

        assert [r[1] for r in db_rows(daemon, "containers")] == ["work"]

    async def test_recreated_qube_inherits_nothing(
        self, tmp_path, port, daemon
    ) -> None:
        """If a qube is re-created under its name while nexusd is down,
        the reconcile at start drops the old qube's containers."""
        await call(daemon, "nexus.ContainerCreate", "pg", source="db")
        await daemon.stop()

        port.add("db", guest=True, uuid="a-new-uuid")
        again = await start_daemon(tmp_path, port)
        try:
            reply = await call(again, "nexus.ContainerList", source="db")
        finally:
            await again.stop()

        assert reply["result"]["containers"] == []

    async def test_tag_removal_stops_service(self, daemon, port) -> None:
        """If the guest tag is removed, the qube is no longer served."""
        port.emit("work", "domain-tag-delete:nexus-guest", tag="nexus-guest")
        await settle(daemon, port)

        reply = await call(daemon, "nexus.ContainerCreate", "web")

        assert reply["error"]["code"] == "not_managed"
