# SPDX-License-Identifier: MIT
"""Who may do what: every service against callers that own the object,
other nexus guests, unmanaged qubes, dom0 and unknown names.

Each row names the call, the caller (qrexec's source, which a guest cannot
forge), the requested target, the code expected, and, for a call that
succeeds, the one change it may make. A refused call must change nothing:
no row, no audit record, not a byte of the links policy file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexusd.sim.layout import SimLayout
from tests.harness import FakePort, call, db_rows, start_daemon

DOM0 = "keyword adminvm"
#: The objects every row starts from: work/web (port 80), db/pg (port
#: 5432), lab/box (port 22), and the link work/web -> db/pg.5432.
SEED: list[tuple[str, str, list[int]]] = [
    ("work", "web", [80]),
    ("db", "pg", [5432]),
    ("lab", "box", [22]),
]
LINK = ("work", "web", "db", "pg", 5432)


@dataclass(frozen=True)
class Row:
    """One cell of the matrix."""

    service: str
    arg: str
    source: str
    target: str
    code: str
    payload: dict[str, Any] | None = None
    #: For ``ok``: containers added/removed, links added/removed.
    added: frozenset[tuple[str, str]] = frozenset()
    removed: frozenset[tuple[str, str]] = frozenset()
    links_removed: frozenset[tuple[Any, ...]] = frozenset()
    links_added: frozenset[tuple[Any, ...]] = frozenset()

    @property
    def id(self) -> str:
        return f"{self.service[6:]}-{self.arg or 'none'}-by-{self.source}"


def _refused_by_all_strangers(
    service: str, arg: str, target: str, payload: dict[str, Any] | None
) -> list[Row]:
    """Unmanaged qube, dom0, an unknown name: refused as not managed."""
    return [
        Row(service, arg, source, target, "not_managed", payload)
        for source in ("personal", "dom0", "ghost")
    ]


FROM_WEB = {"from": "web"}
ROWS: list[Row] = [
    # ContainerCreate: a guest creates in its own qube only.
    Row(
        "nexus.ContainerCreate",
        "api",
        "work",
        DOM0,
        "ok",
        added=frozenset({("work", "api")}),
    ),
    Row(
        "nexus.ContainerCreate",
        "web",
        "db",
        DOM0,
        "ok",
        added=frozenset({("db", "web")}),
    ),
    *_refused_by_all_strangers("nexus.ContainerCreate", "api", DOM0, None),
    Row("nexus.ContainerCreate", "api", "work", "name db", "bad_header"),
    # ContainerRemove: only the owner; it takes the container's links.
    Row(
        "nexus.ContainerRemove",
        "web",
        "work",
        DOM0,
        "ok",
        removed=frozenset({("work", "web")}),
        links_removed=frozenset({LINK}),
    ),
    Row("nexus.ContainerRemove", "web", "db", DOM0, "not_found"),
    Row("nexus.ContainerRemove", "web", "lab", DOM0, "not_found"),
    *_refused_by_all_strangers("nexus.ContainerRemove", "web", DOM0, None),
    Row("nexus.ContainerRemove", "pg", "work", DOM0, "not_found"),
    # ContainerList: each guest its own; strangers nothing.
    Row("nexus.ContainerList", "", "work", DOM0, "ok"),
    Row("nexus.ContainerList", "", "lab", DOM0, "ok"),
    *_refused_by_all_strangers("nexus.ContainerList", "", DOM0, None),
    # ContainerReport: only the owner.
    Row(
        "nexus.ContainerReport",
        "web",
        "work",
        DOM0,
        "ok",
        {"state": "running"},
    ),
    Row(
        "nexus.ContainerReport",
        "web",
        "db",
        DOM0,
        "not_found",
        {"state": "failed"},
    ),
    *_refused_by_all_strangers(
        "nexus.ContainerReport", "web", DOM0, {"state": "running"}
    ),
    # LinkRequest: from the caller's own container to the target qube's.
    Row(
        "nexus.LinkRequest",
        "box.22",
        "work",
        "name lab",
        "ok",
        FROM_WEB,
        links_added=frozenset({("work", "web", "lab", "box", 22)}),
    ),
    Row("nexus.LinkRequest", "pg.5432", "work", "name db", "ok", FROM_WEB),
    Row(
        "nexus.LinkRequest", "pg.5432", "lab", "name db", "not_found", FROM_WEB
    ),
    Row(
        "nexus.LinkRequest", "pg.5432", "db", "name db", "bad_header", FROM_WEB
    ),
    Row("nexus.LinkRequest", "pg.5432", "work", DOM0, "bad_header", FROM_WEB),
    Row(
        "nexus.LinkRequest",
        "pg.5432",
        "work",
        "name dom0",
        "bad_header",
        FROM_WEB,
    ),
    Row(
        "nexus.LinkRequest",
        "pg.5432",
        "work",
        "name personal",
        "not_managed",
        FROM_WEB,
    ),
    Row(
        "nexus.LinkRequest",
        "pg.5432",
        "work",
        "name ghost",
        "not_managed",
        FROM_WEB,
    ),
    *_refused_by_all_strangers(
        "nexus.LinkRequest", "pg.5432", "name db", FROM_WEB
    ),
    # LinkRemove: either end of the link, nobody else.
    Row(
        "nexus.LinkRemove",
        "pg.5432",
        "work",
        "name db",
        "ok",
        FROM_WEB,
        links_removed=frozenset({LINK}),
    ),
    Row(
        "nexus.LinkRemove",
        "pg.5432",
        "db",
        "name work",
        "ok",
        FROM_WEB,
        links_removed=frozenset({LINK}),
    ),
    Row("nexus.LinkRemove", "pg.5432", "lab", "name db", "not_found", FROM_WEB),
    Row(
        "nexus.LinkRemove", "pg.5432", "lab", "name work", "not_found", FROM_WEB
    ),
    *_refused_by_all_strangers(
        "nexus.LinkRemove", "pg.5432", "name db", FROM_WEB
    ),
]


@pytest.fixture
def port() -> FakePort:
    port = FakePort()
    for guest in ("work", "db", "lab"):
        port.add(guest, guest=True)
    port.add("personal")
    return port


@pytest.fixture
async def daemon(tmp_path: Path, port: FakePort):
    SimLayout(tmp_path).policy_dir.mkdir(parents=True)
    daemon = await start_daemon(tmp_path, port)
    for qube, name, ports in SEED:
        reply = await call(
            daemon,
            "nexus.ContainerCreate",
            name,
            source=qube,
            payload={"ports": ports},
        )
        assert reply["ok"], reply
    reply = await call(
        daemon,
        "nexus.LinkRequest",
        "pg.5432",
        source="work",
        target="name db",
        payload=FROM_WEB,
    )
    assert reply["ok"], reply
    yield daemon
    await daemon.stop()


def _state(daemon) -> dict[str, Any]:
    containers = {(r[1], r[3]): r for r in db_rows(daemon, "containers")}
    by_id = {r[0]: (r[1], r[3]) for r in db_rows(daemon, "containers")}
    links = {
        (*by_id[r[1]], *by_id[r[2]], r[3]) for r in db_rows(daemon, "links")
    }
    policy = daemon.config.links_policy_file
    return {
        "containers": containers,
        "links": links,
        "audit": db_rows(daemon, "audit"),
        "policy": policy.read_bytes() if policy.exists() else None,
    }


class TestAuthorizationMatrix:
    @pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
    async def test_caller_gets_its_outcome_and_nothing_more(
        self, daemon, row: Row
    ) -> None:
        """If a caller makes the call, it gets the code of its row; a
        refusal changes no row, audit record or policy byte, and a success
        changes exactly the row's objects."""
        before = _state(daemon)

        reply = await call(
            daemon,
            row.service,
            row.arg,
            source=row.source,
            target=row.target,
            payload=row.payload or b"",
        )

        after = _state(daemon)
        code = "ok" if reply["ok"] else reply["error"]["code"]
        assert code == row.code, reply
        if row.code != "ok":
            assert after == before
            return
        assert (
            set(after["containers"])
            == (set(before["containers"]) - row.removed) | row.added
        )
        assert (
            after["links"]
            == (before["links"] - row.links_removed) | row.links_added
        )
        unchanged = set(before["containers"]) - row.removed
        if row.service != "nexus.ContainerReport":
            for key in unchanged:
                assert after["containers"][key] == before["containers"][key]

    @pytest.mark.parametrize("source", ["work", "db", "lab"])
    async def test_list_shows_only_what_the_caller_takes_part_in(
        self, daemon, source: str
    ) -> None:
        """If a guest lists, it sees its own containers and only the links
        it is an end of, never another qube's containers."""
        reply = await call(daemon, "nexus.ContainerList", source=source)

        result = reply["result"]
        assert {c["qube"] for c in result["containers"]} == {source}
        ends = [{k["from"]["qube"], k["to"]["qube"]} for k in result["links"]]
        assert all(source in pair for pair in ends)
        assert len(ends) == (1 if source in {"work", "db"} else 0)
