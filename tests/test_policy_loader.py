# SPDX-License-Identifier: MIT
"""Tests of loading policy sets: folders, names, includes, compat, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusd.policy import (
    PolicySet,
    load_policy_set,
)
from tests.policy_helpers import (
    ALLOW_ALL,
    PROBE,
    SYSTEM,
    decider,
    dom0_layout,
    folders,
    snapshot,
)


class TestRealPolicy:
    """The unmodified Qubes OS files load as qrexec loads them."""

    def test_whole_set_loads_without_error(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If all real files load together with compat, no error is found."""
        persistent, legacy = dom0_layout(tmp_path, shared_dir)

        policy = load_policy_set(None, persistent, legacy)

        assert policy.errors == ()
        assert [p.name for p in policy.files] == sorted(
            p.name for p in persistent.glob("*.policy")
        )
        services = {rule.service for rule in policy.rules}
        assert {"qubes.Filecopy", "admin.vm.List", "qubes.GetDate"} <= services

    def test_legacy_include_without_link_is_an_error(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If the legacy include/ link is missing, qrexec's error shows."""
        persistent, legacy = dom0_layout(tmp_path, shared_dir)
        shutil.rmtree(legacy / "include")

        policy = load_policy_set(None, persistent, legacy)

        expected = f"{legacy / 'admin.vm.volume.Import'}:13: not a file: "
        assert any(error.startswith(expected) for error in policy.errors)
        assert policy.evaluate(PROBE, SYSTEM).action == "deny"

    @pytest.mark.parametrize(
        "name",
        [
            "35-compat.policy",
            "85-admin-backup-restore.policy",
            "90-admin-policy-default.policy",
            "90-default.policy",
            "91-admin-default-deny.policy",
        ],
    )
    def test_each_file_loads_alone(
        self, tmp_path: Path, shared_dir: Path, name: str
    ) -> None:
        """If one real file is the only one in the folder, it loads."""
        persistent, legacy = dom0_layout(tmp_path, shared_dir)
        for other in persistent.glob("*.policy"):
            if other.name != name:
                other.unlink()

        policy = load_policy_set(None, persistent, legacy)

        assert policy.errors == ()
        assert [p.name for p in policy.files] == [name]

    @pytest.mark.parametrize(
        "name",
        [
            "admin-global-ro",
            "admin-global-rwx",
            "admin-local-ro",
            "admin-local-rwx",
            "admin-policy-ro",
            "admin-policy-rwx",
        ],
    )
    def test_each_include_file_loads_alone(
        self, tmp_path: Path, shared_dir: Path, name: str
    ) -> None:
        """If one include file is pulled in by !include-service, it loads."""
        persistent, _ = dom0_layout(tmp_path, shared_dir)
        for other in persistent.glob("*.policy"):
            other.unlink()
        (persistent / "50-one.policy").write_text(
            f"!include-service test.Service * include/{name}\n"
        )

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()

    def test_each_legacy_file_loads_alone(
        self, tmp_path: Path, shared_dir: Path
    ) -> None:
        """If each legacy file alone is read by !compat-4.0, it loads."""
        source = shared_dir / "fixtures" / "qubes-policy"
        names = sorted(
            p.name for p in (source / "legacy-qubes-rpc-policy").iterdir()
        )
        for name in names:
            persistent, legacy = dom0_layout(tmp_path / name, shared_dir)
            for other in legacy.iterdir():
                if other.is_file() and other.name != name:
                    other.unlink()

            policy = load_policy_set(None, persistent, legacy)

            assert policy.errors == (), name
            assert {
                r.filepath
                for r in policy.rules
                if r.filepath and r.filepath.parent == legacy
            } <= {legacy / name}


class TestFolders:
    """Which files form the set, and in which order."""

    def test_runtime_file_wins_over_persistent_of_same_name(
        self, tmp_path: Path
    ) -> None:
        """If both folders hold a name, only the runtime file is read."""
        runtime, persistent, _ = folders(tmp_path)
        (runtime / "50-x.policy").write_text(
            "test.Probe * work personal deny\n"
        )
        (persistent / "50-x.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(runtime, persistent)

        assert policy.files == (runtime / "50-x.policy",)
        decision = policy.evaluate(PROBE, SYSTEM)
        assert (decision.action, decision.file) == (
            "deny",
            runtime / "50-x.policy",
        )

    def test_files_are_read_in_name_order_across_folders(
        self, tmp_path: Path
    ) -> None:
        """If names interleave across folders, name order decides."""
        runtime, persistent, _ = folders(tmp_path)
        (persistent / "10-a.policy").write_text(
            "test.Other * @anyvm @anyvm deny\n"
        )
        (runtime / "20-b.policy").write_text("test.Probe * work @anyvm deny\n")
        (persistent / "30-c.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(runtime, persistent)

        assert [p.name for p in policy.files] == [
            "10-a.policy",
            "20-b.policy",
            "30-c.policy",
        ]
        assert decider(policy) == "20-b.policy"

    def test_name_order_is_string_order(self, tmp_path: Path) -> None:
        """If numbers differ in width, plain string order still applies."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "9-late.policy").write_text(ALLOW_ALL)
        (persistent / "10-early.policy").write_text(
            "test.Probe * @anyvm @anyvm deny\n"
        )

        policy = load_policy_set(None, persistent)

        assert decider(policy) == "10-early.policy"

    @pytest.mark.parametrize(
        "name",
        [
            "30-user.policy~",
            ".30-user.policy.swp",
            "30-user.policy.rpmnew",
            "30-user.policy.rpmsave",
            "30-user.policy.bak",
            ".30-user.policy",
            "30-user",
            "Upper.txt",
        ],
    )
    def test_editor_leftovers_are_skipped(
        self, tmp_path: Path, name: str
    ) -> None:
        """If a file does not end in .policy or is hidden, it is skipped."""
        _, persistent, _ = folders(tmp_path)
        (persistent / name).write_text("test.Probe * @anyvm @anyvm deny\n")
        (persistent / "90-all.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()
        assert policy.evaluate(PROBE, SYSTEM).action == "allow"

    @pytest.mark.parametrize(
        "name",
        [
            "30-User.policy",
            "30 user.policy",
            "30+user.policy",
            "30-usér.policy",
            "30-user~.policy",
        ],
    )
    def test_bad_policy_name_denies_everything(
        self, tmp_path: Path, name: str
    ) -> None:
        """If a *.policy name has other characters, the whole set denies."""
        _, persistent, _ = folders(tmp_path)
        (persistent / name).write_text(ALLOW_ALL)
        (persistent / "90-all.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(None, persistent)

        assert len(policy.errors) == 1
        assert policy.errors[0].startswith(f"{persistent / name}:0: ")
        assert "invalid file name" in policy.errors[0]
        assert policy.evaluate(PROBE, SYSTEM).action == "deny"

    def test_folder_named_policy_is_skipped(self, tmp_path: Path) -> None:
        """If a folder ends in .policy, it is not a file and is skipped."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "Bad.policy").mkdir()
        (persistent / "90-all.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()

    def test_symlink_to_a_file_is_read(self, tmp_path: Path) -> None:
        """If a *.policy name is a link to a file, the file is read."""
        _, persistent, _ = folders(tmp_path)
        (tmp_path / "real").write_text(ALLOW_ALL)
        (persistent / "50-link.policy").symlink_to(tmp_path / "real")
        (persistent / "60-dangling.policy").symlink_to(tmp_path / "none")

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()
        assert decider(policy) == "50-link.policy"

    def test_fifo_is_skipped_without_blocking(self, tmp_path: Path) -> None:
        """If a *.policy name is a FIFO, it is skipped, not opened."""
        _, persistent, _ = folders(tmp_path)
        os.mkfifo(persistent / "50-fifo.policy")
        (persistent / "90-all.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()
        assert [p.name for p in policy.files] == ["90-all.policy"]

    def test_missing_folder_denies_everything(self, tmp_path: Path) -> None:
        """If a policy folder is missing, qrexec cannot load; all deny."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "90-all.policy").write_text(ALLOW_ALL)

        policy = load_policy_set(tmp_path / "absent", persistent)

        assert policy.errors[0].startswith(f"{tmp_path / 'absent'}:0: ")
        assert policy.evaluate(PROBE, SYSTEM).action == "deny"

    def test_crlf_lines_parse(self, tmp_path: Path) -> None:
        """If a file has CRLF line ends, its lines still parse."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "90-all.policy").write_bytes(
            b"# comment\r\n* * @anyvm @anyvm allow\r\n"
        )

        policy = load_policy_set(None, persistent)

        assert policy.errors == ()
        assert policy.evaluate(PROBE, SYSTEM).line == 2


def _load_one(tmp_path: Path, text: str | bytes) -> tuple[PolicySet, Path]:
    runtime, persistent, legacy = folders(tmp_path)
    path = persistent / "30-user.policy"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    (persistent / "90-all.policy").write_text(ALLOW_ALL)
    return load_policy_set(runtime, persistent, legacy), path


class TestMalformedPolicy:
    """Each error class gives path:line: reason and a set that denies."""

    @pytest.mark.parametrize(
        ("text", "line", "reason"),
        [
            pytest.param(
                "\n\nqubes.Foo * @anyvm @anyvm\n",
                3,
                "wrong number of fields",
                id="wrong-field-count",
            ),
            pytest.param(
                "qubes.F!oo * @anyvm @anyvm allow\n",
                1,
                "contains invalid characters",
                id="bad-service-chars",
            ),
            pytest.param(
                "* +arg @anyvm @anyvm allow\n",
                1,
                "only * argument allowed for * service",
                id="star-service-with-argument",
            ),
            pytest.param(
                "qubes.Foo arg @anyvm @anyvm allow\n",
                1,
                "does not start with +",
                id="argument-without-plus",
            ),
            pytest.param(
                "qubes.Foo * @someone @anyvm allow\n",
                1,
                "invalid source token: '@someone'",
                id="unknown-at-word",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @tag(x) allow\n",
                1,
                "invalid target token: '@tag(x)'",
                id="tag-parenthesis",
            ),
            pytest.param(
                "qubes.Foo * @tag: @anyvm allow\n",
                1,
                "invalid empty @tag: token",
                id="tag-empty",
            ),
            pytest.param(
                "qubes.Foo * @default @anyvm allow\n",
                1,
                "invalid source token: '@default'",
                id="token-in-wrong-column",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm permit\n",
                1,
                "invalid action: 'permit'",
                id="unknown-action",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm deny notify=no notify=no\n",
                1,
                "parameter given twice: 'notify'",
                id="duplicate-param",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm deny notify=sometimes\n",
                1,
                "can be only 'yes' or 'no'",
                id="bad-notify-value",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm deny user=root\n",
                1,
                "invalid parameters for action deny",
                id="unknown-param-for-action",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow default_target=work\n",
                1,
                "invalid parameters for action allow",
                id="allow-with-default-target",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @default allow\n",
                1,
                "allow action for @default rule must specify target=",
                id="default-allow-without-target",
            ),
            pytest.param(
                "!includ include/x\n",
                1,
                "invalid directive",
                id="bad-directive",
            ),
            pytest.param(
                "!include a b\n",
                1,
                "invalid number of params",
                id="directive-param-count",
            ),
            pytest.param(
                "!compat-4.0 now\n",
                1,
                "invalid number of params",
                id="compat-with-param",
            ),
            pytest.param(
                "!include-service qubes.Foo include/x\n",
                1,
                "invalid number of params",
                id="include-service-param-count",
            ),
            pytest.param(
                "# fine\n!include include/nothing\n",
                2,
                "not a file: ",
                id="include-pointing-nowhere",
            ),
            pytest.param(
                "!include-dir nothing.d\n",
                1,
                "not a directory: ",
                id="include-dir-pointing-nowhere",
            ),
            pytest.param(
                "!include-service q/x * include/nothing\n",
                1,
                "contains invalid characters",
                id="include-service-bad-service",
            ),
            pytest.param(
                "!include 30-user.policy\n",
                1,
                "include loop",
                id="include-loop",
            ),
            pytest.param(
                b"# ok\n# caf\xe9\n",
                2,
                "not valid UTF-8",
                id="invalid-utf8",
            ),
        ],
    )
    def test_error_names_place_and_set_denies(
        self, tmp_path: Path, text: str | bytes, line: int, reason: str
    ) -> None:
        """If a file breaks the grammar, path:line: is given; all deny."""
        policy, path = _load_one(tmp_path, text)

        assert policy.errors, "a malformed file must give an error"
        assert policy.errors[0].startswith(f"{path}:{line}: ")
        assert reason in policy.errors[0]
        decision = policy.evaluate(PROBE, SYSTEM)
        assert decision.action == "deny"
        assert decision.file is None
        assert policy.errors[0] in decision.reason

    def test_loading_writes_nothing(self, tmp_path: Path) -> None:
        """If a set with errors is loaded, no file changes."""
        runtime, persistent, _ = folders(tmp_path)
        (persistent / "30-user.policy").write_text("bad line\n")
        before = snapshot(tmp_path)

        policy = load_policy_set(runtime, persistent)

        assert policy.errors
        assert snapshot(tmp_path) == before

    def test_every_bad_line_is_reported(self, tmp_path: Path) -> None:
        """If several lines are bad, each is reported in file order."""
        policy, path = _load_one(tmp_path, "bad\nok * a b deny\nworse\n")

        assert [e.split(": ")[0] for e in policy.errors] == [
            f"{path}:1",
            f"{path}:3",
        ]

    def test_error_inside_include_names_the_included_file(
        self, tmp_path: Path
    ) -> None:
        """If an included file is bad, the error names that file."""
        _, persistent, _ = folders(tmp_path)
        (persistent / "include").mkdir()
        (persistent / "include" / "x").write_text("\nqubes.Foo * a\n")
        (persistent / "30-user.policy").write_text("!include include/x\n")

        policy = load_policy_set(None, persistent)

        assert policy.errors == (
            f"{persistent / 'include' / 'x'}:2: wrong number of fields",
        )

    def test_oversized_file_is_an_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If a file is over the size cap, it is an error, not read."""
        monkeypatch.setattr("nexusd.policy.loader.MAX_POLICY_FILE_BYTES", 64)
        policy, path = _load_one(tmp_path, "# " + "x" * 100 + "\n")

        assert policy.errors[0].startswith(f"{path}:0: cannot read")


class TestHostileFiles:
    """Arbitrary file content never escapes as an exception."""

    @settings(
        max_examples=60,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.binary(max_size=300))
    def test_random_bytes_load_without_raising(
        self, tmp_path: Path, data: bytes
    ) -> None:
        """If a file holds any bytes, loading returns a set, never raises."""
        persistent = tmp_path / "random"
        persistent.mkdir(exist_ok=True)
        (persistent / "30-user.policy").write_bytes(data)

        policy = load_policy_set(None, persistent)

        for error in policy.errors:
            assert error.startswith(f"{persistent / '30-user.policy'}:")
        decision = policy.evaluate(PROBE, SYSTEM)
        assert decision.action in {"allow", "deny", "ask"}
