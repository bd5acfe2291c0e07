# SPDX-License-Identifier: MIT
"""Cross-qube links: the services, the generated policy file, lifetime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexusd.policy import load_policy_set
from nexusd.sim.layout import SimLayout
from tests.harness import (
    FakePort,
    call,
    db_rows,
    guest_port,
    lay_out_policy,
    settle,
    start_daemon,
)

LINKS_FILE = "45-nexus-links.policy"


@pytest.fixture
def port() -> FakePort:
    return guest_port()


@pytest.fixture
def root(tmp_path: Path, shared_dir: Path) -> Path:
    return lay_out_policy(tmp_path, shared_dir)


@pytest.fixture
async def daemon(root: Path, port: FakePort):
    daemon = await start_daemon(root, port)
    await call(daemon, "nexus.ContainerCreate", "web", source="work")
    await call(
        daemon,
        "nexus.ContainerCreate",
        "postgres",
        source="db",
        payload={"ports": [5432]},
    )
    yield daemon
    await daemon.stop()


async def link(
    daemon, *, source="work", target="db", arg="postgres.5432", payload=None
):
    return await call(
        daemon,
        "nexus.LinkRequest",
        arg,
        source=source,
        target=f"name {target}",
        payload=payload if payload is not None else {"from": "web"},
    )


def policy_lines(root: Path) -> list[str]:
    path = SimLayout(root).runtime_policy_dir / LINKS_FILE
    return [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


class TestLinkRequest:
    async def test_link_is_recorded_and_allowed(self, daemon, root) -> None:
        """If work links web to db's postgres:5432, one allow line exists."""
        reply = await link(daemon)

        assert reply["ok"], reply
        assert reply["result"]["created"] is True
        assert reply["result"]["link"]["to"] == {
            "qube": "db",
            "container": "postgres",
            "port": 5432,
        }
        assert reply["result"]["link"]["blocked"] is False
        assert policy_lines(root) == [
            "nexus.Connect +postgres.5432 work db allow"
        ]

    async def test_repeated_request_returns_same_link(self, daemon) -> None:
        """If the request repeats, the same link id comes back."""
        first = await link(daemon)
        second = await link(daemon)

        assert second["result"]["created"] is False
        assert second["result"]["link"]["id"] == first["result"]["link"]["id"]
        assert len(db_rows(daemon, "links")) == 1

    async def test_generated_file_loads_with_real_policy(
        self, daemon, root
    ) -> None:
        """If the file is written, the whole set loads and allows Connect."""
        await link(daemon)
        layout = SimLayout(root)

        policy = load_policy_set(
            layout.runtime_policy_dir,
            layout.policy_dir,
            layout.legacy_policy_dir,
        )

        assert policy.errors == ()
        from nexusd.policy import Request, SystemInfo

        decision = policy.evaluate(
            Request("nexus.Connect", "+postgres.5432", "work", "db"),
            SystemInfo.from_dict(daemon.registry.system_info()),
        )
        assert decision.action == "allow"
        assert decision.file.name == LINKS_FILE

    async def test_agents_of_both_ends_are_told(self, daemon, port) -> None:
        """If a link is made, both running guests get nexus.agent.Sync."""
        await link(daemon)
        await settle(daemon, port)

        told = {q for q, s, _ in port.service_calls if s == "nexus.agent.Sync"}
        assert told == {"work", "db"}
        payload = json.loads(port.service_calls[-1][2])
        assert payload["links"][0]["to"]["port"] == 5432

    async def test_unreachable_agent_is_retried_at_start(
        self, daemon, port
    ) -> None:
        """If db's agent is unreachable, db is synced again when it starts."""
        port.unreachable.add("db")
        await link(daemon)
        await settle(daemon, port)
        assert daemon.agents.pending == {"db"}
        port.unreachable.clear()

        port.emit("db", "domain-start", start_guid="True")
        await settle(daemon, port)

        assert daemon.agents.pending == set()
        assert daemon.agents.delivered.get("db") == 1

    @pytest.mark.parametrize(
        ("source", "target", "code"),
        [
            ("personal", "db", "not_managed"),
            ("work", "personal", "not_managed"),
            ("work", "ghost", "not_managed"),
            ("work", "work", "bad_header"),
            ("work", "dom0", "bad_header"),
        ],
    )
    async def test_refused_qubes(self, daemon, root, source, target, code):
        """If either end is not another nexus guest, refused, nothing kept."""
        reply = await link(daemon, source=source, target=target)

        assert reply["error"]["code"] == code
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []

    async def test_keyword_target_is_refused(self, daemon) -> None:
        """If the target is @default, bad_header."""
        reply = await call(
            daemon,
            "nexus.LinkRequest",
            "postgres.5432",
            target="keyword default",
            payload={"from": "web"},
        )

        assert reply["error"]["code"] == "bad_header"

    async def test_other_qubes_container_as_source_is_refused(
        self, daemon
    ) -> None:
        """If work names db's container as its own, not_found, no link."""
        reply = await link(
            daemon, source="work", target="db", payload={"from": "postgres"}
        )

        assert reply["error"]["code"] == "not_found"
        assert db_rows(daemon, "links") == []

    async def test_port_not_offered_is_refused(self, daemon) -> None:
        """If the port is not offered by the container, not_found."""
        reply = await link(daemon, arg="postgres.5433")

        assert reply["error"]["code"] == "not_found"
        assert db_rows(daemon, "links") == []

    @pytest.mark.parametrize(
        "arg",
        [
            "postgres.5432 work db allow",
            "postgres.5432\nnexus.Connect",
            "post#gres.5432",
            "@anyvm.5432",
            "*.5432",
            "postgres+x.5432",
            "postgr\u00e9s.5432",
            "postgres.5432.1",
            "p" * 40 + ".5432",
            "postgres.99999",
            "postgres.",
            ".5432",
        ],
    )
    async def test_injection_in_argument_is_refused(
        self, daemon, root, arg: str
    ) -> None:
        """If the argument tries to carry policy text, refused, no line."""
        header = f"nexus.LinkRequest+{arg} work name db\0".encode()
        from tests.harness import raw_call

        reply = json.loads(
            await raw_call(
                daemon.config.paths.socket, header + b'{"from": "web"}'
            )
        )

        assert reply["ok"] is False
        assert reply["error"]["code"] in {"bad_argument", "bad_header"}
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []

    @pytest.mark.parametrize(
        "payload",
        [
            {"from": "web allow"},
            {"from": "web\n"},
            {"from": "#"},
            {"from": 1},
            {"from": "web", "to": "x"},
            {},
        ],
    )
    async def test_injection_in_payload_is_refused(
        self, daemon, root, payload
    ) -> None:
        """If the payload's name breaks the grammar, refused, no line."""
        reply = await link(daemon, payload=payload)

        assert reply["error"]["code"] in {"bad_argument", "bad_payload"}
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []


class TestLinkLifetime:
    async def test_either_end_removes_link(self, daemon, root) -> None:
        """If the target end removes the link, its policy line goes."""
        await link(daemon)

        reply = await call(
            daemon,
            "nexus.LinkRemove",
            "postgres.5432",
            source="db",
            target="name work",
            payload={"from": "web"},
        )

        assert reply["ok"], reply
        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []

    async def test_container_removal_removes_link(self, daemon, root) -> None:
        """If the target container is removed, the link and line go."""
        await link(daemon)

        await call(daemon, "nexus.ContainerRemove", "postgres", source="db")

        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []

    async def test_qube_deletion_removes_links(
        self, daemon, port, root
    ) -> None:
        """If db is deleted, links at either end and their lines go."""
        await link(daemon)

        del port.qubes["db"]
        port.emit(None, "domain-delete", vm="db")
        await settle(daemon, port)

        assert db_rows(daemon, "links") == []
        assert policy_lines(root) == []

    async def test_list_shows_links_and_shadowing(self, daemon, root) -> None:
        """If an admin file denies Connect first, the link is blocked by it."""
        await link(daemon)
        user = SimLayout(root).policy_dir / "30-user.policy"
        user.write_text("nexus.Connect * work db deny\n")

        reply = await call(daemon, "nexus.ContainerList", source="work")

        links = reply["result"]["links"]
        assert len(links) == 1
        assert links[0]["blocked"] is True
        assert str(SimLayout(root).root) not in json.dumps(reply)
        admin_view = await daemon.links.links_of("work")
        assert admin_view[0]["blocked_by"] == f"{user}:1"

    async def test_restart_regenerates_file(self, daemon, port, root) -> None:
        """If the file is lost (reboot clears /run), a start rewrites it."""
        await link(daemon)
        await daemon.stop()
        path = SimLayout(root).runtime_policy_dir / LINKS_FILE
        path.unlink()

        again = await start_daemon(root, port)
        await again.stop()

        assert policy_lines(root) == [
            "nexus.Connect +postgres.5432 work db allow"
        ]

    async def test_unchanged_content_is_not_rewritten(self, daemon) -> None:
        """If the content is the same, the file is not written again."""
        await link(daemon)
        writes = daemon.links.writer.writes

        await daemon.links.sync_policy()

        assert daemon.links.writer.writes == writes


class TestUpstreamQrexecAcceptsFile:
    @pytest.mark.qrexec
    async def test_qrexec_parser_loads_generated_file(
        self, daemon, root
    ) -> None:
        """If upstream qrexec's parser loads the folders with nexusd's file,
        it allows the linked Connect and denies an unlinked one."""
        parser = pytest.importorskip("qrexec.policy.parser")
        exc = pytest.importorskip("qrexec.exc")
        await link(daemon)
        layout = SimLayout(root)
        system = {
            "domains": {
                name: {**info, "icon": "", "guivm": "dom0", "internal": False}
                for name, info in daemon.registry.system_info()[
                    "domains"
                ].items()
            }
        }

        upstream = parser.FilePolicy(
            policy_path=[layout.runtime_policy_dir, layout.policy_dir]
        )
        allowed = upstream.evaluate(
            parser.Request(
                "nexus.Connect",
                "+postgres.5432",
                "work",
                "db",
                system_info=system,
            )
        )

        assert allowed.target == "db"
        assert str(allowed.rule.filepath).endswith(LINKS_FILE)
        with pytest.raises(exc.AccessDenied):
            upstream.evaluate(
                parser.Request(
                    "nexus.Connect",
                    "+postgres.5432",
                    "personal",
                    "db",
                    system_info=system,
                )
            )


class TestLinkQuota:
    async def test_requester_quota_does_not_touch_target(
        self, root, port
    ) -> None:
        """If work uses up its link quota towards db, db can still request
        links of its own, and work is refused without learning db's count."""
        port.add("shop", guest=True)
        daemon = await start_daemon(root, port, links_per_qube=2)
        try:
            await call(
                daemon,
                "nexus.ContainerCreate",
                "multi",
                source="db",
                payload={"ports": [1, 2, 3]},
            )
            await call(daemon, "nexus.ContainerCreate", "web", source="work")
            await call(
                daemon,
                "nexus.ContainerCreate",
                "cache",
                source="shop",
                payload={"ports": [6379]},
            )
            for arg in ("multi.1", "multi.2"):
                assert (await link(daemon, arg=arg))["ok"]

            refused = await link(daemon, arg="multi.3")
            await call(daemon, "nexus.ContainerCreate", "app", source="db")
            from_db = await link(
                daemon,
                source="db",
                target="shop",
                arg="cache.6379",
                payload={"from": "app"},
            )
        finally:
            await daemon.stop()

        assert refused["error"]["code"] == "quota_exceeded"
        assert "db" not in refused["error"]["message"]
        assert from_db["ok"], from_db
