# SPDX-License-Identifier: MIT
"""Crash consistency: SIGKILL at each named point and from outside, restart,
check the invariants; and the checker itself catches what it must."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nexusd.linkpolicy import LinkLine, render_links_policy
from nexusd.nixos import creating
from nexusd.qubes.errors import QubeExists
from reliability.crash import CYCLE_POINTS, END, run_crash_cycles
from reliability.crashpoint import install
from reliability.invariants import (
    TEMP_NAME,
    Snapshot,
    check_database,
    check_policy_complete,
    check_policy_matches,
    leftover_files,
)
from reliability.model import ContainerKey, LinkKey, Model, State
from tests.nixos_helpers import make_image, open_dom0

WEB = ContainerKey("work", "web")
PG = ContainerKey("db", "pg")
LINK = LinkKey(WEB, PG, 5432)


class TestCrashCycles:
    def test_kill_at_every_point_keeps_invariants(self, tmp_path: Path) -> None:
        """If nexusd is killed at each named point (template import steps
        included) and from outside, every restart finds the promised
        objects, the links file equal to the database, no temporary file,
        and every template complete and nexusd's, or gone; nexusd is a
        fresh process each time. A first cycle without a kill gives the
        guests objects to link."""
        schedule: list[str | None] = [END, *sorted(CYCLE_POINTS), None]

        report = run_crash_cycles(
            tmp_path / "dom0",
            len(schedule),
            seed=8,
            spawn="exec",
            schedule=schedule,
        )

        assert report.violations == []
        assert report.cycles == len(schedule)
        assert report.calls["ok"] > 0
        assert set(report.kills) == {*CYCLE_POINTS, "outside", END}


class TestCreationRecord:
    async def test_untagged_qube_left_by_a_crash_is_swept(
        self, tmp_path: Path
    ) -> None:
        """If a crash came between a recorded creation and nexusd's tag,
        the sweep removes that qube and says so in the audit trail."""
        async with open_dom0(tmp_path) as dom0:
            ctx = dom0.service.context()
            await creating.begin(ctx, "nixos-x", "TemplateVM")
            dom0.model.create("TemplateVM", "nixos-x", "black")

            removed = await dom0.service.sweep()

            assert removed == ["nixos-x"]
            assert dom0.qube("nixos-x") is None
            assert ("unmarked_qube_removed", "nixos-x") in [
                row[:2] for row in dom0.audit_rows()
            ]

    async def test_admins_qube_made_in_the_race_is_never_swept(
        self, tmp_path: Path
    ) -> None:
        """If an administrator creates the name between nexusd's check and
        its create call, the import fails with qube_exists, and no sweep
        ever touches the administrator's qube."""
        async with open_dom0(tmp_path) as dom0:
            port = dom0.service.port
            create = port.create_qube

            async def raced(*args: object, **kwargs: object) -> None:
                dom0.model.create("TemplateVM", "nixos-x", "black")
                await create(*args, **kwargs)

            port.create_qube = raced  # type: ignore[method-assign]
            image, sha = make_image(tmp_path)

            with pytest.raises(QubeExists):
                await dom0.service.import_template(
                    name="nixos-x", image=image, sha256=sha
                )
            removed = await dom0.service.sweep()

            assert removed == []
            assert dom0.qube("nixos-x") is not None


class TestCrashPoint:
    def test_unknown_point_is_refused(self) -> None:
        """If a crash point is misspelt, install refuses it."""
        with pytest.raises(ValueError, match="unknown crash point"):
            install("after_comit")


def _snapshot(
    containers: dict[ContainerKey, str],
    links: dict[LinkKey, str],
    *,
    audited: bool = True,
) -> Snapshot:
    return Snapshot(
        containers=containers,
        links=links,
        integrity="ok",
        foreign_key_errors=0,
        audited_containers=set(containers) if audited else set(),
        audited_links=set(links.values()) if audited else set(),
    )


class TestModelCheck:
    def test_lost_ok_is_reported(self) -> None:
        """If a container answered ok is not in the database, it is named."""
        model = Model()
        model.set_container(WEB, State.PRESENT)

        found = model.check(set(), set())

        assert found == [f"container answered ok is lost: {WEB}"]

    def test_removed_object_back_is_reported(self) -> None:
        """If a removed link is in the database again, it is named."""
        model = Model()
        model.set_link(LINK, State.ABSENT)

        found = model.check(set(), {LINK})

        assert found == [f"link removed (or refused) is back: {LINK}"]

    def test_object_nobody_asked_for_is_reported(self) -> None:
        """If the database holds a container no call made, it is named."""
        found = Model().check({PG}, set())

        assert found == [f"container nobody asked for: {PG}"]

    def test_unknown_takes_the_database_state(self) -> None:
        """If an object's last call got no answer, either state is fine and
        the model then follows the database."""
        model = Model()
        model.set_container(WEB, State.UNKNOWN)
        model.set_container(PG, State.UNKNOWN)

        found = model.check({WEB}, set())

        assert found == []
        assert model.containers == {WEB: State.PRESENT, PG: State.ABSENT}

    def test_removed_container_takes_its_links(self) -> None:
        """If a container is removed, its links are promised gone too."""
        model = Model()
        model.set_container(WEB, State.PRESENT)
        model.set_link(LINK, State.PRESENT)

        model.set_container(WEB, State.ABSENT)

        assert model.links[LINK] is State.ABSENT


class TestDiskChecks:
    def test_policy_file_differing_from_database_is_reported(
        self, tmp_path: Path
    ) -> None:
        """If the links file lacks a line the database implies, it is a
        violation; the same file for the same database is not."""
        folder = tmp_path / "run" / "qubes" / "policy.d"
        folder.mkdir(parents=True)
        snap = _snapshot({WEB: "u1", PG: "u2"}, {LINK: "lnk-1"})
        path = folder / "45-nexus-links.policy"
        path.write_text(render_links_policy([]))

        stale = check_policy_matches(tmp_path, snap)
        path.write_text(render_links_policy(snap.link_lines()))

        assert stale == [
            "links file differs from the database: 1 lines missing,"
            " 0 lines extra"
        ]
        assert check_policy_matches(tmp_path, snap) == []

    def test_half_written_policy_file_is_reported(self, tmp_path: Path) -> None:
        """If the links file is cut short, it is not a whole rendering."""
        folder = tmp_path / "run" / "qubes" / "policy.d"
        folder.mkdir(parents=True)
        text = render_links_policy([LinkLine("pg", 5432, "work", "db")])
        (folder / "45-nexus-links.policy").write_text(text[:-12])

        found = check_policy_complete(tmp_path)

        assert "links file is not one whole rendering" in found

    def test_temporary_file_is_reported(self, tmp_path: Path) -> None:
        """If the writer's temporary file is left, it is named."""
        folder = tmp_path / "run" / "qubes" / "policy.d"
        folder.mkdir(parents=True)
        (folder / TEMP_NAME).write_text("x")

        found = leftover_files(tmp_path)

        assert found == [f"temporary file left behind: {TEMP_NAME}"]

    def test_orphan_and_unaudited_objects_are_reported(self) -> None:
        """If a container's owner is gone or it lacks its audit record, it
        is named."""
        snap = _snapshot({WEB: "old-uuid"}, {}, audited=False)

        found = check_database(snap, {"work": "new-uuid"})

        assert found == [
            f"container without its owner qube: {WEB}",
            f"container without its audit record: {WEB}",
        ]

    def test_database_read_sees_dangling_link(self, tmp_path: Path) -> None:
        """If a link points at a missing container, the snapshot counts it
        (foreign keys are checked, not trusted)."""
        from reliability.invariants import read_snapshot

        database = tmp_path / "db.sqlite3"
        conn = sqlite3.connect(database)
        conn.executescript(
            "CREATE TABLE containers (id INTEGER PRIMARY KEY, qube TEXT,"
            " qube_uuid TEXT, name TEXT);"
            "CREATE TABLE links (id TEXT PRIMARY KEY, from_container INTEGER"
            " REFERENCES containers (id), to_container INTEGER REFERENCES"
            " containers (id), port INTEGER);"
            "CREATE TABLE audit (action TEXT, qube TEXT, object TEXT);"
            "INSERT INTO links VALUES ('lnk-1', 7, 8, 80);"
        )
        conn.close()

        snap = read_snapshot(database)

        assert snap.foreign_key_errors == 2
        assert check_database(snap, {}) == ["2 dangling references"]
