# SPDX-License-Identifier: MIT
"""The shipped default policy, policy/50-nexus.policy, as dom0 would load it.

Every test loads it beside the real Qubes policy files (fixtures) with the
project's policy engine and checks the decisions an administrator relies on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nexusd.policy import Request, SystemInfo, load_policy_set

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "policy" / "50-nexus.policy"
RPC_DIR = REPO / "qubes-rpc"

#: The services nexusd serves in dom0 (one /etc/qubes-rpc entry each).
CONTAINER_SERVICES = (
    "nexus.ContainerCreate",
    "nexus.ContainerRemove",
    "nexus.ContainerList",
    "nexus.ContainerReport",
)
LINK_SERVICES = ("nexus.LinkRequest", "nexus.LinkRemove")
#: Services that must be denied by the shipped file's final rules.
ALL_NEXUS_SERVICES = (
    *CONTAINER_SERVICES,
    *LINK_SERVICES,
    "nexus.Connect",
    "nexus.agent.Sync",
)


def _domain(qtype: str, tags: list[str], uuid_digit: str) -> dict[str, object]:
    return {
        "type": qtype,
        "tags": tags,
        "default_dispvm": None,
        "template_for_dispvms": False,
        "power_state": "Running",
        "uuid": f"{uuid_digit * 8}-0000-4000-8000-000000000000",
        "icon": "appvm-green",
        "guivm": "dom0",
    }


#: The machine, as qubesd's internal.GetSystemInfo describes it.
SYSTEM_INFO = {
    "domains": {
        "dom0": {
            **_domain("AdminVM", [], "0"),
            "uuid": "00000000-0000-0000-0000-000000000000",
            "guivm": None,
        },
        "work": _domain("AppVM", ["nexus-guest"], "1"),
        "db": _domain("AppVM", ["nexus-guest"], "2"),
        "personal": _domain("AppVM", [], "3"),
        "web": _domain("AppVM", ["nexus-guest", "web"], "4"),
    }
}
SYSTEM = SystemInfo.from_dict(SYSTEM_INFO)
#: Calls and how the shipped file (with the real Qubes files) decides them.
DECISIONS = [
    ("nexus.ContainerCreate", "+web", "work", "@adminvm", "allow", "dom0"),
    ("nexus.ContainerList", "+", "db", "dom0", "allow", "dom0"),
    ("nexus.ContainerList", "+web", "work", "@adminvm", "deny", None),
    ("nexus.ContainerReport", "+web", "personal", "@adminvm", "deny", None),
    ("nexus.LinkRequest", "+postgres.5432", "work", "db", "deny", None),
    ("nexus.LinkRemove", "+postgres.5432", "db", "work", "allow", "dom0"),
    ("nexus.LinkRemove", "+postgres.5432", "personal", "db", "deny", None),
    ("nexus.Connect", "+postgres.5432", "work", "db", "deny", None),
    ("nexus.agent.Sync", "+", "work", "db", "deny", None),
]


@pytest.fixture(name="policy_dirs")
def fixture_policy_dirs(tmp_path: Path, shared_dir: Path) -> dict[str, Path]:
    """dom0's three policy folders: the real files plus the shipped one."""
    persistent = tmp_path / "etc" / "qubes" / "policy.d"
    shutil.copytree(
        shared_dir / "fixtures" / "qubes-policy" / "policy.d", persistent
    )
    for path in (persistent, *persistent.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.copy(SHIPPED, persistent / SHIPPED.name)
    runtime = tmp_path / "run" / "qubes" / "policy.d"
    runtime.mkdir(parents=True)
    legacy = tmp_path / "etc" / "qubes-rpc" / "policy"
    legacy.mkdir(parents=True)
    return {"runtime": runtime, "persistent": persistent, "legacy": legacy}


def _decide(
    dirs: dict[str, Path], service: str, arg: str, source: str, target: str
) -> tuple[str, str | None, str | None]:
    policy = load_policy_set(
        dirs["runtime"], dirs["persistent"], dirs["legacy"]
    )
    assert policy.errors == ()
    decision = policy.evaluate(Request(service, arg, source, target), SYSTEM)
    name = decision.file.name if decision.file is not None else None
    return decision.action, decision.target, name


def _commented_examples() -> list[str]:
    return [
        line[1:]
        for line in SHIPPED.read_text().splitlines()
        if line.startswith("#nexus.")
    ]


class TestShippedPolicyLoads:
    """The file loads, alone and with everything dom0 ships."""

    def test_loads_with_real_qubes_policy_without_error(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If loaded beside every real Qubes policy file, no error is found."""
        policy = load_policy_set(
            policy_dirs["runtime"],
            policy_dirs["persistent"],
            policy_dirs["legacy"],
        )

        assert policy.errors == ()
        assert policy_dirs["persistent"] / SHIPPED.name in policy.files

    def test_commented_examples_load_when_enabled(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If an admin copies the examples into 30-user.policy, they load."""
        examples = _commented_examples()
        (policy_dirs["persistent"] / "30-user.policy").write_text(
            "\n".join(examples) + "\n"
        )

        policy = load_policy_set(
            policy_dirs["runtime"],
            policy_dirs["persistent"],
            policy_dirs["legacy"],
        )

        assert len(examples) >= 3
        assert policy.errors == ()

    def test_examples_show_allow_ask_and_tags(self) -> None:
        """If an admin reads the examples, allow, ask and tags are shown."""
        examples = [line.split() for line in _commented_examples()]

        actions = {fields[4] for fields in examples}
        assert {"allow", "ask"} <= actions
        assert any(fields[2].startswith("@tag:") for fields in examples)
        assert all(
            "target=dom0" in fields
            for fields in examples
            if fields[4] in {"allow", "ask"}
        )

    def test_every_rule_is_about_nexus_services(self) -> None:
        """If the file is read rule by rule, each names a nexus service."""
        rules = [
            line.split()
            for line in SHIPPED.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

        assert rules
        assert {fields[0] for fields in rules} == set(ALL_NEXUS_SERVICES)

    def test_allow_rules_only_for_dom0_services(self) -> None:
        """If a rule allows, its service has an /etc/qubes-rpc entry."""
        served = {path.name for path in RPC_DIR.iterdir()}
        allowed = {
            line.split()[0]
            for line in SHIPPED.read_text().splitlines()
            if not line.lstrip().startswith("#")
            and len(line.split()) > 4
            and line.split()[4] == "allow"
        }

        assert allowed
        assert allowed <= served


class TestUpstreamQrexecAgrees:
    """Upstream qrexec's own parser, where installed, decides alike."""

    @pytest.mark.qrexec
    def test_upstream_parser_decides_as_project_engine(
        self, policy_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If qrexec's policy parser loads the same folders, it takes the
        same decision as the project's engine for every listed call."""
        parser = pytest.importorskip("qrexec.policy.parser")
        compat = pytest.importorskip("qrexec.policy.parser_compat")
        exc = pytest.importorskip("qrexec.exc")
        monkeypatch.setattr(compat, "POLICYPATH_OLD", policy_dirs["legacy"])
        upstream = parser.FilePolicy(
            policy_path=[policy_dirs["runtime"], policy_dirs["persistent"]]
        )

        decided = []
        for service, arg, source, target, _, _ in DECISIONS:
            request = parser.Request(
                service, arg, source, target, system_info=SYSTEM_INFO
            )
            try:
                resolution = upstream.evaluate(request)
            except exc.AccessDenied:
                decided.append(("deny", None))
            else:
                decided.append(("allow", resolution.target))

        assert decided == [(row[4], row[5]) for row in DECISIONS]


class TestShippedPolicyDecisions:
    """What the shipped file decides, next to the real Qubes files."""

    @pytest.mark.parametrize(
        ("service", "arg", "source", "target", "action", "resolved"), DECISIONS
    )
    def test_project_engine_decides_listed_calls(
        self,
        policy_dirs: dict[str, Path],
        service: str,
        arg: str,
        source: str,
        target: str,
        action: str,
        resolved: str | None,
    ) -> None:
        """If the project's engine decides a listed call, the shipped file
        decides it as the table says (the table upstream is held to)."""
        decided = _decide(policy_dirs, service, arg, source, target)

        assert decided == (action, resolved, SHIPPED.name)

    @pytest.mark.parametrize("service", CONTAINER_SERVICES)
    def test_guest_container_service_to_adminvm_allowed(
        self, policy_dirs: dict[str, Path], service: str
    ) -> None:
        """If a nexus guest calls a container service on @adminvm, it may."""
        arg = "+" if service == "nexus.ContainerList" else "+web"

        decided = _decide(policy_dirs, service, arg, "work", "@adminvm")

        assert decided == ("allow", "dom0", SHIPPED.name)

    def test_guest_container_service_to_dom0_name_allowed(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If a guest names dom0 instead of @adminvm, the same rule allows."""
        decided = _decide(
            policy_dirs, "nexus.ContainerCreate", "+web", "work", "dom0"
        )

        assert decided == ("allow", "dom0", SHIPPED.name)

    @pytest.mark.parametrize("service", CONTAINER_SERVICES)
    def test_untagged_qube_container_service_denied(
        self, policy_dirs: dict[str, Path], service: str
    ) -> None:
        """If a qube without the nexus-guest tag calls, the file denies it."""
        arg = "+" if service == "nexus.ContainerList" else "+web"

        decided = _decide(policy_dirs, service, arg, "personal", "@adminvm")

        assert decided == ("deny", None, SHIPPED.name)

    def test_container_list_with_argument_denied(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If ContainerList comes with an argument, it is denied."""
        decided = _decide(
            policy_dirs, "nexus.ContainerList", "+web", "work", "@adminvm"
        )

        assert decided == ("deny", None, SHIPPED.name)

    def test_link_request_denied_by_default(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If no admin rule allows a link, even two guests are denied."""
        decided = _decide(
            policy_dirs, "nexus.LinkRequest", "+postgres.5432", "work", "db"
        )

        assert decided == ("deny", None, SHIPPED.name)

    def test_link_request_allowed_by_user_file(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If 30-user.policy allows the pair, it wins and goes to dom0."""
        (policy_dirs["persistent"] / "30-user.policy").write_text(
            "nexus.LinkRequest +postgres.5432 work db allow target=dom0\n"
        )

        decided = _decide(
            policy_dirs, "nexus.LinkRequest", "+postgres.5432", "work", "db"
        )

        assert decided == ("allow", "dom0", "30-user.policy")

    def test_user_file_deny_overrides_container_allow(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If 30-user.policy denies a guest, the shipped allow is shadowed."""
        (policy_dirs["persistent"] / "30-user.policy").write_text(
            "nexus.ContainerCreate * work @adminvm deny\n"
        )

        decided = _decide(
            policy_dirs, "nexus.ContainerCreate", "+web", "work", "@adminvm"
        )

        assert decided == ("deny", None, "30-user.policy")

    @pytest.mark.parametrize(
        ("source", "target"), [("work", "db"), ("db", "work")]
    )
    def test_link_remove_between_guests_allowed(
        self, policy_dirs: dict[str, Path], source: str, target: str
    ) -> None:
        """If either end of a link removes it, the call goes to dom0."""
        decided = _decide(
            policy_dirs, "nexus.LinkRemove", "+postgres.5432", source, target
        )

        assert decided == ("allow", "dom0", SHIPPED.name)

    def test_link_remove_from_untagged_qube_denied(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If an untagged qube asks to remove a link, it is denied."""
        decided = _decide(
            policy_dirs, "nexus.LinkRemove", "+postgres.5432", "personal", "db"
        )

        assert decided == ("deny", None, SHIPPED.name)

    def test_connect_denied_without_live_link(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If nexusd wrote no line for a link, nexus.Connect is denied."""
        decided = _decide(
            policy_dirs, "nexus.Connect", "+postgres.5432", "work", "db"
        )

        assert decided == ("deny", None, SHIPPED.name)

    def test_connect_allowed_by_runtime_links_file(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If nexusd's 45-nexus-links.policy allows a link, it comes first."""
        (policy_dirs["runtime"] / "45-nexus-links.policy").write_text(
            "nexus.Connect +postgres.5432 work db allow\n"
        )

        decided = _decide(
            policy_dirs, "nexus.Connect", "+postgres.5432", "work", "db"
        )

        assert decided == ("allow", "db", "45-nexus-links.policy")

    @pytest.mark.parametrize("service", ALL_NEXUS_SERVICES)
    @pytest.mark.parametrize("target", ["db", "@adminvm"])
    def test_every_nexus_service_ends_in_deny(
        self, policy_dirs: dict[str, Path], service: str, target: str
    ) -> None:
        """If an untagged qube calls any nexus service anywhere, it is denied
        by the shipped file itself, not by the absence of a rule."""
        decided = _decide(policy_dirs, service, "+x.1", "personal", target)

        assert decided == ("deny", None, SHIPPED.name)

    def test_agent_sync_between_guests_denied(
        self, policy_dirs: dict[str, Path]
    ) -> None:
        """If a guest calls another guest's agent service, it is denied."""
        decided = _decide(policy_dirs, "nexus.agent.Sync", "+", "work", "db")

        assert decided == ("deny", None, SHIPPED.name)
