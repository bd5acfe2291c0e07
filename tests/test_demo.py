# SPDX-License-Identifier: MIT
"""The README's demo, step by step: each answer is what the issue asks."""

from __future__ import annotations

import io

import pytest

from nexusd.demo import Demo, play


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("demo") / "dom0"
    demo = Demo(root, out=io.StringIO())
    try:
        play(demo)
    finally:
        demo.stop_all()
    return demo


def step(demo: Demo, start: str):
    found = [s for s in demo.steps if s.title.startswith(start)]
    assert found, f"no step {start!r}"
    return found[0]


def steps(demo: Demo, start: str):
    return [s for s in demo.steps if s.title.startswith(start)]


class TestDemo:
    def test_containers_are_created(self, demo) -> None:
        """If work and db ask, their containers are created."""
        for title in ("work asks for container 'web'", "db asks for"):
            reply = step(demo, title).reply()
            assert reply["ok"] is True
            assert reply["result"]["created"] is True

    def test_repeat_gives_same_answer(self, demo) -> None:
        """If work repeats a request, it gets the same record back."""
        first = step(demo, "work asks for container 'web'").reply()
        again = step(demo, "work repeats").reply()

        assert again["result"]["created"] is False
        assert again["result"]["container"] == first["result"]["container"]

    def test_personal_is_refused_by_policy(self, demo) -> None:
        """If personal asks, qrexec refuses with status 126."""
        refused = step(demo, "personal (not a nexus guest)")

        assert refused.status == 126
        assert refused.stdout == ""

    def test_quota_is_enforced(self, demo) -> None:
        """If work exceeds its quota, quota_exceeded."""
        reply = step(demo, "work asks for a third").reply()

        assert reply["error"]["code"] == "quota_exceeded"

    def test_remove_then_list(self, demo) -> None:
        """If work removes api, its list holds only web."""
        assert step(demo, "work removes 'api'").reply()["ok"]
        listed = step(demo, "work lists its containers").reply()

        names = [c["name"] for c in listed["result"]["containers"]]
        assert names == ["web"]

    def test_data_plane_follows_the_link(self, demo) -> None:
        """If linked, bytes reach db's listener; before and after, and for
        personal, the connection is refused."""
        before = step(demo, "Before any link")
        linked = step(demo, "work links its 'web' to db's").reply()
        through = step(demo, "A byte stream from work")
        personal = step(demo, "personal cannot connect")
        after = step(demo, "The same connection is now refused")

        assert before.status == 126
        assert linked["ok"] is True
        assert through.status == 0
        assert through.stdout == "db/postgres got: hello"
        assert personal.status == 126
        assert after.status == 126

    def test_deleting_db_removes_its_objects(self, demo) -> None:
        """If db is deleted, the link and its policy line go."""
        policy_files = steps(demo, "nexusd's runtime policy file")
        gone = step(demo, "The policy line is gone")
        listed = step(demo, "work's link went with db").reply()

        assert "nexus.Connect +postgres.5432 work db allow" in (
            policy_files[0].stdout
        )
        rules = [
            line
            for line in gone.stdout.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        assert rules == []
        assert listed["result"]["links"] == []

    def test_nixos_steps(self, demo) -> None:
        """If the admin imports, creates and applies, each step succeeds,
        and the wrong hash and the non-NixOS template are refused."""
        assert step(demo, "Import a NixOS root image").status == 0
        assert step(demo, "A wrong sha256").status == 1
        assert step(demo, "Create a NixOS qube").status == 0
        assert step(demo, "A qube from a template").status == 1
        assert step(demo, "Apply it").status == 0
        assert step(demo, "Qubes not based").status == 0

    def test_nexusctl_view(self, demo) -> None:
        """If the demo ends, nexusctl shows the link and explains it."""
        links = step(demo, "nexusctl links")
        explained = step(demo, "Which rule lets work")

        assert links.status == 0
        assert "cache" in links.stdout and "shop" in links.stdout
        assert explained.status == 0
        assert "45-nexus-links.policy" in explained.stdout

    def test_nexusd_stops_cleanly(self, demo) -> None:
        """If the demo ends, nexusd exits 0 on SIGTERM."""
        assert "nexusd exited with status 0" in demo.out.getvalue()
