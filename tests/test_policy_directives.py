# SPDX-License-Identifier: MIT
"""Tests of the loader's directives and overrides: includes, compat, check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexusd.policy import (
    PolicySet,
    Request,
    check_policy_set,
    load_policy_set,
    parse_rule_line,
)
from tests.policy_helpers import (
    ALLOW_ALL,
    PROBE,
    SYSTEM,
    decider,
    folders,
    snapshot,
)


class TestIncludes:
    """!include, !include-dir and !include-service."""

    def test_include_inserts_rules_in_place(self, tmp_path: Path) -> None:
        """If a file includes another, its rules stand at the directive."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "include").mkdir()
        (persistent / "include" / "probe").write_text(
            "test.Probe * work personal deny\n"
        )
        (persistent / "30-user.policy").write_text(
            "test.Other * @anyvm @anyvm deny\n!include include/probe\n"
            + ALLOW_ALL
        )

        policy = load_policy_set(None, persistent)

        assert [r.service for r in policy.rules] == [
            "test.Other",
            "test.Probe",
            "*",
        ]
        decision = policy.evaluate(PROBE, SYSTEM)
        assert (decision.file, decision.line) == (
            persistent / "include" / "probe",
            1,
        )

    def test_include_resolves_against_the_top_file_folder(
        self, tmp_path: Path
    ) -> None:
        """If a runtime file includes a relative path, it is under /run."""
        runtime, persistent, _ = folders(tmp_path)
        (runtime / "include").mkdir()
        (runtime / "include" / "x").write_text(
            "test.Probe * @anyvm @anyvm deny\n"
        )
        (runtime / "10-a.policy").write_text("!include include/x\n")

        policy = load_policy_set(runtime, persistent)

        assert policy.errors == ()
        assert policy.evaluate(PROBE, SYSTEM).file == runtime / "include" / "x"

    def test_include_dir_reads_policy_files_in_order(
        self, tmp_path: Path
    ) -> None:
        """If a folder is included, its *.policy files come by name."""
        _, persistent, _ = folders(tmp_path)
        extra = tmp_path / "extra.d"
        extra.mkdir()
        (extra / "b.policy").write_text(ALLOW_ALL)
        (extra / "a.policy").write_text("test.Probe * @anyvm @anyvm deny\n")
        (extra / "c.policy~").write_text("garbage\n")
        (persistent / "30-user.policy").write_text(f"!include-dir {extra}\n")

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()
        assert decider(policy) == "a.policy"

    def test_include_dir_with_bad_name_denies(self, tmp_path: Path) -> None:
        """If an included folder has a bad *.policy name, all deny."""
        _, persistent, _ = folders(tmp_path)
        extra = tmp_path / "extra.d"
        extra.mkdir()
        (extra / "B.policy").write_text(ALLOW_ALL)
        (persistent / "30-user.policy").write_text(f"!include-dir {extra}\n")

        policy = load_policy_set(None, persistent)

        assert policy.errors[0].startswith(f"{extra / 'B.policy'}:0: ")

    def test_include_service_reads_old_syntax(self, tmp_path: Path) -> None:
        """If !include-service pulls a file, its lines use the old syntax."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "include").mkdir()
        (persistent / "include" / "old").write_text(
            "## comment\n$anyvm $anyvm allow,target=dom0,notify=yes\n"
        )
        (persistent / "30-user.policy").write_text(
            "!include-service test.Probe + include/old\n"
        )

        policy = load_policy_set(None, persistent)

        assert policy.rules == (
            parse_rule_line(
                "test.Probe + @anyvm @anyvm allow target=dom0 notify=yes",
                "x",
                1,
            ),
        )
        assert policy.rules[0].lineno == 2

    def test_include_service_refuses_other_directives(
        self, tmp_path: Path
    ) -> None:
        """If an old-syntax file has !include-dir, it is a bad directive."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "include").mkdir()
        (persistent / "include" / "old").write_text("!include-dir /tmp\n")
        (persistent / "30-user.policy").write_text(
            "!include-service test.Probe * include/old\n"
        )

        policy = load_policy_set(None, persistent)

        assert policy.errors == (
            f"{persistent / 'include' / 'old'}:1: invalid directive",
        )

    def test_include_chain_past_depth_limit_is_an_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If includes nest past the cap, the deepest one is an error."""
        monkeypatch.setattr("nexusd.policy.loader.MAX_INCLUDE_DEPTH", 3)
        _, persistent, _ = folders(tmp_path)
        (persistent / "i").mkdir()
        for n in range(5):
            (persistent / "i" / str(n)).write_text(f"!include i/{n + 1}\n")
        (persistent / "i" / "5").write_text("")
        (persistent / "30-user.policy").write_text("!include i/0\n")

        policy = load_policy_set(None, persistent)

        assert len(policy.errors) == 1
        assert "nested deeper than 3" in policy.errors[0]


class TestCompat:
    """!compat-4.0 and the legacy per-service files."""

    def _set(self, tmp_path: Path, files: dict[str, str]) -> PolicySet:
        _, persistent, legacy = folders(tmp_path)
        (persistent / "35-compat.policy").write_text("!compat-4.0\n")
        (persistent / "90-all.policy").write_text(ALLOW_ALL)
        for name, text in files.items():
            (legacy / name).write_text(text)
        return load_policy_set(None, persistent, legacy)

    def test_argument_file_adds_implicit_denies(self, tmp_path: Path) -> None:
        """If a legacy file names an argument, unmatched calls are denied."""
        policy = self._set(tmp_path, {"test.Probe+x": "work personal allow\n"})
        legacy = tmp_path / "legacy"

        allowed = policy.evaluate(
            Request("test.Probe", "+x", "work", "personal"), SYSTEM
        )
        denied = policy.evaluate(
            Request("test.Probe", "+x", "personal", "work"), SYSTEM
        )
        other_argument = policy.evaluate(
            Request("test.Probe", "+y", "personal", "work"), SYSTEM
        )

        assert (allowed.action, allowed.file, allowed.line) == (
            "allow",
            legacy / "test.Probe+x",
            1,
        )
        assert (denied.action, denied.file, denied.line) == (
            "deny",
            legacy / "test.Probe+x",
            None,
        )
        assert other_argument.file == tmp_path / "etc" / "90-all.policy"

    def test_file_without_argument_falls_through(self, tmp_path: Path) -> None:
        """If a legacy file has no argument, no implicit deny is added."""
        policy = self._set(tmp_path, {"test.Probe": "work dom0 allow\n"})

        assert policy.evaluate(PROBE, SYSTEM).action == "allow"
        assert decider(policy) == "90-all.policy"

    def test_specific_argument_comes_before_any_argument(
        self, tmp_path: Path
    ) -> None:
        """If a service has both forms, the argument file is read first."""
        policy = self._set(
            tmp_path,
            {
                "test.Probe": "$anyvm $anyvm deny\n",
                "test.Probe+": "$anyvm $anyvm allow\n",
            },
        )

        assert policy.evaluate(PROBE, SYSTEM).action == "allow"

    @pytest.mark.parametrize(
        "name",
        [
            "test.Probe~",
            "test.Probe.rpmnew",
            ".test.Probe.swp",
            "test.Probe.swp",
        ],
    )
    def test_leftovers_in_legacy_folder_are_skipped(
        self, tmp_path: Path, name: str
    ) -> None:
        """If a legacy name is a leftover, it is ignored, not an error."""
        policy = self._set(tmp_path, {name: "$anyvm $anyvm deny\n"})

        assert policy.errors == ()
        assert policy.evaluate(PROBE, SYSTEM).action == "allow"

    def test_bad_legacy_line_is_an_error(self, tmp_path: Path) -> None:
        """If a legacy line is malformed, the set denies everything."""
        policy = self._set(tmp_path, {"test.Probe": "$anyvm $anyvm maybe\n"})
        legacy = tmp_path / "legacy"

        assert policy.errors[0].startswith(f"{legacy / 'test.Probe'}:1: ")
        assert policy.evaluate(PROBE, SYSTEM).action == "deny"

    def test_missing_legacy_folder_is_an_error(self, tmp_path: Path) -> None:
        """If the legacy folder is absent, !compat-4.0 fails as in qrexec."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "35-compat.policy").write_text("!compat-4.0\n")

        policy = load_policy_set(None, persistent, tmp_path / "absent")

        assert policy.errors[0].startswith(
            f"{persistent / '35-compat.policy'}:1: "
        )


class TestCheckPolicySet:
    """Validation of a set with some files replaced."""

    def test_new_file_with_error_is_reported(self, tmp_path: Path) -> None:
        """If a proposed file is bad, its error comes back; disk unchanged."""
        runtime, persistent, _ = folders(tmp_path)
        (persistent / "90-all.policy").write_text(ALLOW_ALL)
        target = runtime / "45-nexus-links.policy"
        before = snapshot(tmp_path)

        errors = check_policy_set(
            runtime, persistent, overrides={target: "nexus.Connect +a b c\n"}
        )

        assert errors == (f"{target}:1: wrong number of fields",)
        assert snapshot(tmp_path) == before

    def test_good_override_hides_a_bad_file(self, tmp_path: Path) -> None:
        """If a bad file is replaced by good text, the set checks clean."""
        runtime, persistent, _ = folders(tmp_path)
        bad = persistent / "30-user.policy"
        bad.write_text("broken\n")

        assert check_policy_set(runtime, persistent) != ()
        assert check_policy_set(runtime, persistent, overrides={bad: ""}) == ()
        assert (
            check_policy_set(runtime, persistent, overrides={bad: None}) == ()
        )

    def test_removing_an_included_file_is_an_error(
        self, tmp_path: Path
    ) -> None:
        """If an override removes a file another includes, it is refused."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "include").mkdir()
        included = persistent / "include" / "x"
        included.write_text("")
        (persistent / "30-user.policy").write_text("!include include/x\n")

        errors = check_policy_set(None, persistent, overrides={included: None})

        assert errors == (
            f"{persistent / '30-user.policy'}:1: including a file that"
            f" will be removed: {included.resolve()}",
        )

    def test_bad_override_name_is_reported(self, tmp_path: Path) -> None:
        """If a proposed file has a bad name, the set would deny."""
        runtime, persistent, _ = folders(tmp_path)

        errors = check_policy_set(
            runtime, persistent, overrides={runtime / "Links.policy": ""}
        )

        assert errors[0].startswith(f"{runtime / 'Links.policy'}:0: ")


class TestHostileIncludes:
    """Include paths that would make a naive loader raise or hang."""

    @pytest.mark.parametrize(
        "line",
        [
            pytest.param("!include a\x00b", id="nul-in-include"),
            pytest.param("!include-dir a\x00b", id="nul-in-include-dir"),
            pytest.param("!include-service s * a\x00b", id="nul-in-service"),
            pytest.param("!include loop", id="symlink-loop"),
            pytest.param("!include fifo", id="fifo"),
            pytest.param("!include-dir 30-user.policy", id="dir-is-a-file"),
            pytest.param("!include .", id="include-is-a-folder"),
        ],
    )
    def test_bad_include_is_an_error_at_its_line(
        self, tmp_path: Path, line: str
    ) -> None:
        """If an include cannot be followed, its line is the error."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "loop").symlink_to(persistent / "loop")
        os.mkfifo(persistent / "fifo")
        path = persistent / "30-user.policy"
        path.write_text(f"# first\n{line}\n" + ALLOW_ALL)

        policy = load_policy_set(None, persistent)

        assert len(policy.errors) == 1
        assert policy.errors[0].startswith(f"{path}:2: ")
        assert policy.evaluate(PROBE, SYSTEM).action == "deny"

    def test_include_dir_of_own_folder_is_a_loop(self, tmp_path: Path) -> None:
        """If a file includes its own folder, the loop is an error."""
        _, persistent, _ = folders(tmp_path)
        path = persistent / "30-user.policy"
        path.write_text("!include-dir .\n")

        policy = load_policy_set(None, persistent)

        assert policy.errors
        assert all("include loop" in error for error in policy.errors)
