# SPDX-License-Identifier: MIT
"""Policy explain and check, without D-Bus: decisions, shadowing, problems,
hostile requests, and agreement with qrexec's own parser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nexusd.errors import BadArgument
from nexusd.explain import (
    PolicyRequest,
    check,
    explain,
    parse_policy_request,
)
from nexusd.linkpolicy import LinkLine, render_links_policy
from nexusd.sim.layout import SimLayout
from tests.conftest import REPO
from tests.harness import sim_config

LINK = LinkLine(container="pg", port=5432, source="work", target="db")
SYSTEM = {
    "domains": {
        "dom0": {"type": "AdminVM", "tags": [], "power_state": "Running"},
        "work": {
            "type": "AppVM",
            "tags": ["nexus-guest"],
            "power_state": "Running",
            "uuid": "11111111-1111-1111-1111-111111111111",
        },
        "db": {
            "type": "AppVM",
            "tags": ["nexus-guest"],
            "power_state": "Running",
            "uuid": "22222222-2222-2222-2222-222222222222",
        },
        "personal": {"type": "AppVM", "tags": [], "power_state": "Halted"},
    }
}


@pytest.fixture
def root(tmp_path: Path, shared_dir: Path) -> Path:
    layout = SimLayout(tmp_path)
    shutil.copytree(
        shared_dir / "fixtures" / "qubes-policy" / "policy.d",
        layout.policy_dir,
        ignore=shutil.ignore_patterns("35-compat.policy"),
    )
    shutil.copy(REPO / "policy" / "50-nexus.policy", layout.policy_dir)
    layout.runtime_policy_dir.mkdir(parents=True)
    return tmp_path


@pytest.fixture
def config(root: Path):
    config = sim_config(root)
    config.links_policy_file.write_text(render_links_policy([LINK]))
    return config


def connect(source: str = "work", target: str = "db") -> PolicyRequest:
    return parse_policy_request(
        untrusted_source=source,
        untrusted_target=target,
        untrusted_service_and_arg="nexus.Connect+pg.5432",
    )


def admin_file(config, text: str, name: str = "30-user.policy") -> Path:
    path = config.paths.policy_dir / name
    path.write_text(text)
    return path


def our_line(config) -> int:
    lines = config.links_policy_file.read_text().splitlines()
    return 1 + next(i for i, t in enumerate(lines) if t.startswith("nexus."))


class TestExplain:
    def test_link_decided_by_nexusd_line(self, config) -> None:
        """If only nexusd's line matches, it decides and shadows nothing."""
        found = explain(config, SYSTEM, connect(), engine="nexusd")

        assert found.decision.action == "allow"
        assert found.decision.file == config.links_policy_file
        assert found.decision.line == our_line(config)
        assert found.by_nexusd is True
        assert found.shadowed == ()
        assert found.rule == "nexus.Connect +pg.5432 work db allow"

    def test_admin_deny_shadows_nexusd_line(self, config) -> None:
        """If an admin rule denies first, it decides and nexusd's line is
        reported as shadowed, with its file and line."""
        path = admin_file(config, "nexus.Connect * work @anyvm deny\n")

        found = explain(config, SYSTEM, connect(), engine="nexusd")

        assert found.decision.action == "deny"
        assert (found.decision.file, found.decision.line) == (path, 1)
        assert found.by_nexusd is False
        assert found.shadowed == (
            {
                "file": str(config.links_policy_file),
                "line": our_line(config),
                "rule": "nexus.Connect +pg.5432 work db allow",
            },
        )

    def test_unlinked_call_hits_shipped_deny(self, config) -> None:
        """If no link exists for the pair, the shipped final deny decides."""
        found = explain(config, SYSTEM, connect("personal"), engine="nexusd")

        assert found.decision.action == "deny"
        assert found.decision.file is not None
        assert found.decision.file.name == "50-nexus.policy"
        assert found.shadowed == ()

    def test_control_service_explained(self, config) -> None:
        """If a guest's ContainerCreate is explained, the shipped allow
        line for tagged guests decides it."""
        request = parse_policy_request(
            untrusted_source="work",
            untrusted_target="@adminvm",
            untrusted_service_and_arg="nexus.ContainerCreate+web",
        )

        found = explain(config, SYSTEM, request, engine="nexusd")

        assert found.decision.action == "allow"
        assert found.decision.target == "dom0"
        assert found.rule is not None
        assert found.rule.startswith("nexus.ContainerCreate * @tag:nexus-guest")

    def test_broken_policy_denies_and_says_why(self, config) -> None:
        """If a policy file has a syntax error, the decision is a denial
        that names the error."""
        admin_file(config, "nexus.Connect * work\n")

        found = explain(config, SYSTEM, connect(), engine="nexusd")

        assert found.decision.action == "deny"
        assert "30-user.policy:1" in found.decision.reason

    def test_dict_form_is_json_ready(self, config) -> None:
        """If explained, the dict form has the request and decision."""
        found = explain(config, SYSTEM, connect(), engine="nexusd").as_dict()

        assert found["service"] == "nexus.Connect+pg.5432"
        assert found["decision"]["file"] == str(config.links_policy_file)
        assert found["engine"] == "nexusd"


class TestParsePolicyRequest:
    @pytest.mark.parametrize(
        ("source", "target", "service"),
        [
            ("", "db", "nexus.Connect"),
            ("work db", "db", "nexus.Connect"),
            ("@anyvm", "db", "nexus.Connect"),
            ("wörk", "db", "nexus.Connect"),
            ("a" * 32, "db", "nexus.Connect"),
            ("work", "@anyvm", "nexus.Connect"),
            ("work", "@tag:x", "nexus.Connect"),
            ("work", "db\n", "nexus.Connect"),
            ("work", "@dispvm:" + "a" * 60, "nexus.Connect"),
            ("work", "db", ""),
            ("work", "db", "+arg"),
            ("work", "db", "nexus Connect"),
            ("work", "db", "nexus.Connect+a b"),
            ("work", "db", "nexus.Connect+\x00"),
            ("work", "db", "n" * 256),
            (None, "db", "nexus.Connect"),
            ("work", 5, "nexus.Connect"),
        ],
    )
    def test_hostile_part_is_refused(self, source, target, service) -> None:
        """If any part breaks its grammar, the request is refused as a bad
        argument."""
        with pytest.raises(BadArgument) as caught:
            parse_policy_request(
                untrusted_source=source,
                untrusted_target=target,
                untrusted_service_and_arg=service,
            )

        assert caught.value.code == "bad_argument"

    def test_missing_argument_becomes_plus(self) -> None:
        """If the service has no argument, it is evaluated with ``+``."""
        found = parse_policy_request(
            untrusted_source="work",
            untrusted_target="",
            untrusted_service_and_arg="nexus.ContainerList",
        )

        assert found == PolicyRequest(
            "work", "@default", "nexus.ContainerList", "+"
        )

    def test_dispvm_and_uuid_targets_accepted(self) -> None:
        """If the target is @dispvm:NAME or uuid:UUID, it is kept."""
        for target in (
            "@dispvm:work",
            "uuid:" + "a" * 8 + "-aaaa" * 3 + "-" + "a" * 12,
        ):
            found = parse_policy_request(
                untrusted_source="work",
                untrusted_target=target,
                untrusted_service_and_arg="qubes.Filecopy",
            )

            assert found.target == target


class TestCheck:
    def test_clean_set_has_no_problems(self, config) -> None:
        """If every link has its line and nothing overrides it, check is
        empty."""
        assert check(config, SYSTEM, [LINK], engine="nexusd") == []

    def test_syntax_error_reported_with_place(self, config) -> None:
        """If a file has a syntax error, it is an error at its file:line."""
        path = admin_file(config, "\nnexus.Connect * work db allow bogus=1\n")

        problems = check(config, SYSTEM, [LINK], engine="nexusd")

        errors = [p for p in problems if p.kind == "syntax_error"]
        assert [(p.file, p.line, p.severity) for p in errors] == [
            (str(path), 2, "error")
        ]

    def test_admin_deny_blocks_link(self, config) -> None:
        """If an admin rule denies a link's Connect, the link is blocked,
        and the rule is named."""
        path = admin_file(config, "nexus.Connect +pg.5432 work db deny\n")

        problems = check(config, SYSTEM, [LINK], engine="nexusd")

        assert [(p.kind, p.file, p.line) for p in problems] == [
            ("blocked", str(path), 1)
        ]
        assert problems[0].link == {
            "source": "work",
            "target": "db",
            "argument": "+pg.5432",
        }

    def test_admin_allow_shadows_and_opens(self, config) -> None:
        """If an admin rule allows Connect first, nexusd's line is shadowed
        and the rule is reported as opening Connect without a link."""
        path = admin_file(config, "nexus.Connect * @anyvm @anyvm allow\n")

        problems = check(config, SYSTEM, [LINK], engine="nexusd")

        assert sorted((p.kind, p.severity, p.file) for p in problems) == [
            ("open_connect", "warning", str(path)),
            ("shadowed", "warning", str(path)),
        ]

    def test_link_without_line_is_missing(self, config) -> None:
        """If the database has a link the file lacks, it is missing."""
        other = LinkLine(container="web", port=80, source="db", target="work")

        problems = check(config, SYSTEM, [LINK, other], engine="nexusd")

        assert [(p.kind, p.link["argument"]) for p in problems] == [
            ("missing", "+web.80")
        ]


@pytest.mark.qrexec
class TestQrexecEngine:
    @pytest.fixture(autouse=True)
    def _need_qrexec(self) -> None:
        pytest.importorskip("qrexec.policy.parser")

    @pytest.mark.parametrize(
        ("source", "target", "service"),
        [
            ("work", "db", "nexus.Connect+pg.5432"),
            ("personal", "db", "nexus.Connect+pg.5432"),
            ("work", "@adminvm", "nexus.ContainerCreate+web"),
            ("personal", "@adminvm", "nexus.ContainerCreate+web"),
            ("work", "db", "nexus.LinkRemove+pg.5432"),
        ],
    )
    def test_engines_agree(self, config, source, target, service) -> None:
        """If qrexec's parser decides a call, nexusd's engine decides it the
        same way, by the same file and line."""
        request = parse_policy_request(
            untrusted_source=source,
            untrusted_target=target,
            untrusted_service_and_arg=service,
        )

        ours = explain(config, SYSTEM, request, engine="nexusd").decision
        theirs = explain(config, SYSTEM, request, engine="qrexec").decision

        assert (theirs.action, theirs.target, theirs.file, theirs.line) == (
            ours.action,
            ours.target,
            ours.file,
            ours.line,
        )

    def test_qrexec_engine_reports_shadowing(self, config) -> None:
        """If qrexec decides by an admin deny, nexusd's line is shadowed."""
        admin_file(config, "nexus.Connect * work @anyvm deny\n")

        found = explain(config, SYSTEM, connect(), engine="qrexec")

        assert found.engine == "qrexec"
        assert found.decision.action == "deny"
        assert [s["line"] for s in found.shadowed] == [our_line(config)]
