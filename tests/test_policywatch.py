# SPDX-License-Identifier: MIT
"""The inotify shortcut: 'quiet' only when nothing in the folders changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusd.services.policywatch import PolicyWatch


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "policy.d"
    folder.mkdir()
    (folder / "30-user.policy").write_text("")
    return folder


class TestPolicyWatch:
    def test_unarmed_watch_is_never_quiet(self, folder: Path) -> None:
        """If the watch was not armed, it says 'maybe changed'."""
        assert PolicyWatch([folder]).quiet() is False

    def test_armed_watch_without_change_is_quiet(self, folder: Path) -> None:
        """If nothing changed since arm(), quiet() is true, repeatedly."""
        watch = PolicyWatch([folder])
        watch.arm()

        assert watch.quiet() and watch.quiet()
        watch.close()

    @pytest.mark.parametrize("change", ["edit", "create", "delete", "rename"])
    def test_any_change_ends_quiet(self, folder: Path, change: str) -> None:
        """If a file is edited, added, removed or renamed, quiet() is false
        until the watch is armed again."""
        watch = PolicyWatch([folder])
        watch.arm()
        user = folder / "30-user.policy"

        if change == "edit":
            user.write_text("nexus.Connect * work db deny\n")
        elif change == "create":
            (folder / "20-admin.policy").write_text("")
        elif change == "delete":
            user.unlink()
        else:
            user.rename(folder / "31-user.policy")

        assert watch.quiet() is False
        assert watch.quiet() is False
        watch.arm()
        assert watch.quiet() is True
        watch.close()

    def test_missing_folder_is_never_quiet(self, tmp_path: Path) -> None:
        """If a folder cannot be watched, the watch keeps saying 'maybe'."""
        watch = PolicyWatch([tmp_path / "absent"])
        watch.arm()

        assert watch.quiet() is False
