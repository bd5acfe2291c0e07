# SPDX-License-Identifier: MIT
"""Tests of policy evaluation against the real Qubes set plus nexusd's own.

Expected decisions follow qrexec's code (``qrexec/policy/parser.py``): the
first matching rule in file-name order decides; each row names the file and
finds the expected line by its leading words, so the row states intent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusd.policy import (
    Decision,
    PolicySet,
    Request,
    SystemInfo,
    load_policy_set,
    parse_rule_line,
)

REPO = Path(__file__).resolve().parents[1]
ZERO = "00000000-0000-0000-0000-000000000000"
WORK_UUID = "3f1e2d4c-0000-4000-8000-000000000001"

SYSTEM_DICT: dict[str, object] = {
    "domains": {
        "dom0": {"type": "AdminVM", "uuid": ZERO, "power_state": "Running"},
        "sys-net": {"type": "AppVM", "power_state": "Running"},
        "sys-whonix": {"type": "AppVM", "power_state": "Running"},
        "fedora-42": {"type": "TemplateVM"},
        "whonix-gw-17": {"type": "TemplateVM", "tags": ["whonix-updatevm"]},
        "work": {
            "type": "AppVM",
            "tags": ["nexus-guest"],
            "default_dispvm": "default-dvm",
            "power_state": "Running",
            "uuid": WORK_UUID,
            "guivm": "dom0",
        },
        "db": {
            "type": "AppVM",
            "tags": ["nexus-guest"],
            "default_dispvm": "default-dvm",
            "power_state": "Halted",
        },
        "personal": {
            "type": "AppVM",
            "default_dispvm": "default-dvm",
            "power_state": "Running",
        },
        "vault": {"type": "AppVM", "power_state": "Halted"},
        "untrusted": {
            "type": "AppVM",
            "tags": ["anon-vm"],
            "power_state": "Running",
        },
        "default-dvm": {
            "type": "AppVM",
            "tags": ["dvm-ok"],
            "template_for_dispvms": True,
        },
        "disp1234": {"type": "DispVM", "power_state": "Running"},
        "preload-int": {
            "type": "DispVM",
            "internal": True,
            "power_state": "Running",
        },
        "mgmt": {"type": "AppVM", "power_state": "Running"},
        "created-vm": {"type": "AppVM", "tags": ["created-by-mgmt"]},
        "restorer": {
            "type": "AppVM",
            "tags": ["backup-restore-mgmt"],
            "power_state": "Running",
        },
        "restoring": {"type": "AppVM", "tags": ["backup-restore-in-progress"]},
        "backup-store": {
            "type": "AppVM",
            "tags": ["backup-restore-storage"],
            "power_state": "Running",
        },
        "headless": {"type": "AppVM", "power_state": "Running", "guivm": None},
    }
}
SYSTEM = SystemInfo.from_dict(SYSTEM_DICT)

#: The administrator's own rules, as a Qubes user would write them.
USER_POLICY = f"""\
admin.vm.List        *  mgmt       @adminvm  allow target=dom0
admin.vm.List        *  mgmt       @anyvm    allow target=dom0
nexus.LinkRequest    +postgres.5432  work  db  allow target=dom0
nexus.LinkRequest    *  work       personal  ask target=dom0
nexus.LinkRequest    *  untrusted  @anyvm    deny
qubes.Filecopy       *  work       vault     deny notify=no
qubes.Filecopy       *  work       personal  ask default_target=personal
test.Gpg             *  work       vault     allow autostart=no
test.Gpg             *  work       @anyvm    allow autostart=no
test.Loop            *  @anyvm     @anyvm    allow
test.Uuid            *  uuid:{WORK_UUID}  dom0  allow
test.Ask             *  @anyvm     @anyvm    ask
test.PdfConvert      *  @anyvm     @dispvm:@tag:dvm-ok  allow
test.Redirect        *  @anyvm     @default  allow target=@dispvm:default-dvm
test.RedirectGhost   *  @anyvm     @anyvm    allow target=ghost
test.AskNoStart      *  work       @anyvm    ask autostart=no
test.User            *  @anyvm     dom0      allow user=root notify=yes
test.DispName        *  @anyvm     @dispvm:default-dvm  allow
test.AskDefault      *  work       @anyvm    ask default_target=@dispvm
test.AskOutside      *  work       @tag:nexus-guest  ask default_target=vault
"""

#: The body qubes-core-admin's generate-admin-policy writes for these
#: methods (scope and read/write classifiers from qubes/api/admin.py).
ADMIN_DEFAULT_BODY = """\
!include-service admin.vm.List * include/admin-global-ro
!include-service admin.vm.property.Get * include/admin-local-ro
!include-service admin.vm.property.GetAll * include/admin-local-ro
!include-service admin.vm.Start * include/admin-local-rwx
!include-service admin.vm.feature.Set * include/admin-local-rwx
!include-service admin.Events * include/admin-global-ro
"""

#: Used only when the project's policy/50-nexus.policy is not there yet.
NEXUS_FALLBACK = """\
nexus.ContainerCreate   *   @tag:nexus-guest  @adminvm     allow
nexus.ContainerList     +   @tag:nexus-guest  @adminvm     allow
nexus.LinkRemove        *   @tag:nexus-guest  @tag:nexus-guest allow target=dom0
nexus.ContainerCreate   *   @anyvm            @adminvm     deny
nexus.ContainerList     *   @anyvm            @adminvm     deny
nexus.LinkRequest       *   @anyvm            @anyvm       deny
nexus.Connect           *   @anyvm            @anyvm       deny
"""

LINKS_POLICY = "nexus.Connect +postgres.5432 work db allow\n"


@pytest.fixture(name="dom0", scope="module")
def _dom0(
    tmp_path_factory: pytest.TempPathFactory, shared_dir: Path
) -> tuple[Path, Path]:
    """A fresh R4.2 dom0 policy layout: real files plus nexusd and admin."""
    root = tmp_path_factory.mktemp("dom0")
    source = shared_dir / "fixtures" / "qubes-policy"
    persistent = root / "etc" / "qubes" / "policy.d"
    runtime = root / "run" / "qubes" / "policy.d"
    legacy = root / "etc" / "qubes-rpc" / "policy"
    shutil.copytree(source / "policy.d", persistent)
    (legacy / "include").mkdir(parents=True)
    runtime.mkdir(parents=True)
    nexus = REPO / "policy" / "50-nexus.policy"
    if nexus.is_file():
        shutil.copy(nexus, persistent / "50-nexus.policy")
    else:
        (persistent / "50-nexus.policy").write_text(NEXUS_FALLBACK)
    (persistent / "30-user.policy").write_text(USER_POLICY)
    header = (source / "90-admin-default.policy.header").read_text()
    (persistent / "90-admin-default.policy").write_text(
        header + ADMIN_DEFAULT_BODY
    )
    with (persistent / "include" / "admin-local-rwx").open("a") as f:
        f.write("mgmt @tag:created-by-mgmt allow,target=dom0\n")
    with (persistent / "include" / "admin-policy-rwx").open("a") as f:
        f.write("mgmt @adminvm allow target=dom0\n")
    (runtime / "45-nexus-links.policy").write_text(LINKS_POLICY)
    return runtime, persistent


@pytest.fixture(name="policy", scope="module")
def _policy(dom0: tuple[Path, Path]) -> PolicySet:
    runtime, persistent = dom0
    legacy = persistent.parents[1] / "qubes-rpc" / "policy"
    policy = load_policy_set(runtime, persistent, legacy)
    assert policy.errors == ()
    return policy


def _line_of(path: Path, words: tuple[str, ...]) -> int:
    """The first line of *path* whose words start with *words*."""
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if tuple(line.replace(",", " ").split()[: len(words)]) == words:
            return lineno
    raise AssertionError(f"no line {words!r} in {path}")


def _path_of(dom0: tuple[Path, Path], name: str) -> Path:
    runtime, persistent = dom0
    if (runtime / name).exists():
        return runtime / name
    return persistent / name


_D = "90-default.policy"
_U = "30-user.policy"
_N = "50-nexus.policy"
_BR = "85-admin-backup-restore.policy"
_DD = "91-admin-default-deny.policy"
_LOCAL = "include/admin-local-rwx"
_PRW = "include/admin-policy-rwx"

#: service, argument, source, intended target -> action, target, file,
#: leading words of the deciding line (None: no rule decides).
TABLE = [
    ("qubes.FeaturesRequest", "+", "work", "dom0", "allow", "dom0", _D,
     ("qubes.FeaturesRequest",)),
    ("qubes.FeaturesRequest", "+", "work", "@adminvm", "allow", "dom0", _D,
     ("qubes.FeaturesRequest",)),
    ("qubes.FeaturesRequest", "+", "work", "@default", "deny", None, None,
     None),
    ("qubes.FeaturesRequest", "+", "dom0", "dom0", "deny", None, None, None),
    ("qubes.NotifyTools", "+", "fedora-42", "dom0", "allow", "dom0", _D,
     ("qubes.NotifyTools",)),
    ("qubes.Filecopy", "+", "work", "@default", "ask", None, _D,
     ("qubes.Filecopy",)),
    ("qubes.Filecopy", "+", "work", "personal", "ask", "personal", _U,
     ("qubes.Filecopy", "*", "work", "personal")),
    ("qubes.Filecopy", "+", "work", "vault", "deny", None, _U,
     ("qubes.Filecopy", "*", "work", "vault")),
    ("qubes.Filecopy", "+", "work", "dom0", "deny", None, None, None),
    ("qubes.GetDate", "+", "untrusted", "@default", "deny", None, _D,
     ("qubes.GetDate", "*", "@tag:anon-vm")),
    ("qubes.GetDate", "+", "work", "@default", "allow", "dom0", _D,
     ("qubes.GetDate", "*", "@anyvm")),
    ("qubes.GetDate", "+", "work", "ghost", "allow", "dom0", _D,
     ("qubes.GetDate", "*", "@anyvm")),
    ("qubes.GetRandomizedTime", "+", "work", "dom0", "allow", "dom0", _D,
     ("qubes.GetRandomizedTime",)),
    ("qubes.OpenInVM", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _D, ("qubes.OpenInVM", "*", "@anyvm", "@dispvm")),
    ("qubes.OpenInVM", "+", "untrusted", "@dispvm", "deny", None, _D,
     ("qubes.OpenInVM", "*", "@anyvm", "@dispvm")),
    ("qubes.OpenInVM", "+", "work", "@dispvm:default-dvm", "ask", None, _D,
     ("qubes.OpenInVM", "*", "@anyvm", "@anyvm")),
    ("qubes.OpenInVM", "+", "work", "@dispvm:personal", "deny", None, None,
     None),
    ("qubes.OpenURL", "+", "work", "personal", "ask", None, _D,
     ("qubes.OpenURL", "*", "@anyvm", "@anyvm")),
    ("qubes.StartApp", "+firefox", "personal", "@dispvm", "allow",
     "@dispvm:default-dvm", _D, ("qubes.StartApp", "*", "@anyvm", "@dispvm")),
    ("qubes.UpdatesProxy", "+", "whonix-gw-17", "@default", "allow",
     "sys-whonix", _D, ("qubes.UpdatesProxy", "*", "@tag:whonix-updatevm")),
    ("qubes.UpdatesProxy", "+", "whonix-gw-17", "sys-net", "deny", None, _D,
     ("qubes.UpdatesProxy", "*", "@tag:whonix-updatevm", "@anyvm")),
    ("qubes.UpdatesProxy", "+", "fedora-42", "@default", "allow", "sys-net",
     _D, ("qubes.UpdatesProxy", "*", "@type:TemplateVM")),
    ("qubes.UpdatesProxy", "+", "work", "@default", "deny", None, _D,
     ("qubes.UpdatesProxy", "*", "@anyvm", "@anyvm")),
    ("qubes.VMShell", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _D, ("qubes.VMShell", "*", "@anyvm", "@dispvm")),
    ("qubes.VMShell", "+", "work", "personal", "deny", None, _D,
     ("qubes.VMShell", "*", "@anyvm", "@anyvm")),
    ("qubes.VMRootShell", "+", "work", "personal", "deny", None, _D,
     ("qubes.VMRootShell",)),
    ("qubes.ConnectTCP", "+22", "work", "personal", "deny", None, _D,
     ("qubes.ConnectTCP",)),
    ("qubes.Notifications", "+", "work", "@default", "allow", "dom0", _D,
     ("qubes.Notifications",)),
    ("qubes.Notifications", "+", "work", "personal", "deny", None, None, None),
    ("qubes.RestoreById", "+", "restorer", "backup-store", "allow",
     "backup-store", _BR, ("qubes.RestoreById",)),
    ("policy.RegisterArgument", "+x", "work", "dom0", "deny", None, _D,
     ("policy.RegisterArgument", "*", "@anyvm", "dom0")),
    ("policy.List", "+", "mgmt", "@adminvm", "allow", "dom0", _PRW,
     ("mgmt",)),
    ("policy.Replace", "+30-user", "mgmt", "@adminvm", "allow", "dom0", _PRW,
     ("mgmt",)),
    ("policy.Get", "+30-user", "work", "@adminvm", "deny", None, None, None),
    ("admin.vm.List", "+", "mgmt", "@adminvm", "allow", "dom0", _U,
     ("admin.vm.List", "*", "mgmt", "@adminvm")),
    ("admin.vm.List", "+", "mgmt", "work", "allow", "dom0", _U,
     ("admin.vm.List", "*", "mgmt", "@anyvm")),
    ("admin.vm.List", "+", "restorer", "@adminvm", "allow", "dom0", _BR,
     ("admin.vm.List", "*", "@tag:backup-restore-mgmt", "dom0")),
    ("admin.vm.List", "+", "work", "@adminvm", "deny", None, None, None),
    ("admin.vm.List", "+", "dom0", "@adminvm", "deny", None, None, None),
    ("admin.vm.property.GetAll", "+", "work", "personal", "deny", None, _DD,
     ("admin.vm.property.GetAll", "*", "@anyvm", "@anyvm")),
    ("admin.vm.property.GetAll", "+", "work", "@adminvm", "deny", None, _DD,
     ("admin.vm.property.GetAll", "*", "@anyvm", "@adminvm")),
    ("admin.property.GetAll", "+", "work", "dom0", "deny", None, _DD,
     ("admin.property.GetAll", "*", "@anyvm", "@adminvm")),
    ("admin.vm.Start", "+", "mgmt", "created-vm", "allow", "dom0", _LOCAL,
     ("mgmt",)),
    ("admin.vm.property.Get", "+netvm", "mgmt", "created-vm", "allow", "dom0",
     _LOCAL, ("mgmt",)),
    ("admin.vm.Start", "+", "mgmt", "work", "deny", None, None, None),
    ("admin.vm.feature.Set", "+gui", "restorer", "restoring", "allow", "dom0",
     _BR, ("admin.vm.feature.Set",)),
    ("nexus.ContainerCreate", "+web", "work", "@adminvm", "allow", "dom0", _N,
     ("nexus.ContainerCreate", "*", "@tag:nexus-guest")),
    ("nexus.ContainerCreate", "+web", "personal", "@adminvm", "deny", None,
     _N, ("nexus.ContainerCreate", "*", "@anyvm", "@adminvm")),
    ("nexus.ContainerList", "+", "work", "@adminvm", "allow", "dom0", _N,
     ("nexus.ContainerList", "+")),
    ("nexus.ContainerList", "+x", "work", "@adminvm", "deny", None, _N,
     ("nexus.ContainerList", "*", "@anyvm", "@adminvm")),
    ("nexus.LinkRequest", "+postgres.5432", "work", "db", "allow", "dom0", _U,
     ("nexus.LinkRequest", "+postgres.5432")),
    ("nexus.LinkRequest", "+redis.6379", "work", "db", "deny", None, _N,
     ("nexus.LinkRequest", "*", "@anyvm", "@anyvm")),
    ("nexus.LinkRequest", "+web.80", "work", "personal", "ask", None, _U,
     ("nexus.LinkRequest", "*", "work", "personal")),
    ("nexus.LinkRequest", "+web.80", "untrusted", "work", "deny", None, _U,
     ("nexus.LinkRequest", "*", "untrusted")),
    ("nexus.LinkRequest", "+postgres.5432", "work", "ghost", "deny", None, _N,
     ("nexus.LinkRequest", "*", "@anyvm", "@anyvm")),
    ("nexus.Connect", "+postgres.5432", "work", "db", "allow", "db",
     "45-nexus-links.policy", ("nexus.Connect",)),
    ("nexus.Connect", "+postgres.5432", "db", "work", "deny", None, _N,
     ("nexus.Connect", "*", "@anyvm", "@anyvm")),
    ("nexus.LinkRemove", "+postgres.5432", "work", "db", "allow", "dom0", _N,
     ("nexus.LinkRemove", "*", "@tag:nexus-guest")),
    ("test.Gpg", "+", "work", "vault", "deny", None, _U,
     ("test.Gpg", "*", "work", "vault")),
    ("test.Gpg", "+", "work", "personal", "allow", "personal", _U,
     ("test.Gpg", "*", "work", "@anyvm")),
    ("test.Loop", "+", "work", "work", "deny", None, _U, ("test.Loop",)),
    ("test.Uuid", "+", "work", "dom0", "allow", "dom0", _U, ("test.Uuid",)),
    ("test.Uuid", "+", "personal", "dom0", "deny", None, None, None),
    ("test.Ask", "+", "headless", "personal", "deny", None, _U, ("test.Ask",)),
    ("test.PdfConvert", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _U, ("test.PdfConvert",)),
    ("test.Redirect", "+", "work", "@default", "allow", "@dispvm:default-dvm",
     _U, ("test.Redirect",)),
    ("test.RedirectGhost", "+", "work", "personal", "deny", None, _U,
     ("test.RedirectGhost",)),
    ("test.User", "+", "work", "@adminvm", "allow", "dom0", _U,
     ("test.User",)),
    ("test.DispName", "+", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     _U, ("test.DispName",)),
    ("test.DispName", "+", "untrusted", "@dispvm", "deny", None, None, None),
]  # fmt: skip


def _evaluate(policy: PolicySet, request: Request) -> Decision:
    return policy.evaluate(request, SYSTEM)


class TestRealSetTable:
    """Decisions of the real set plus nexusd's file and an admin's file."""

    def test_table_is_large_enough(self) -> None:
        """If the table shrank below 40 requests, the issue is not met."""
        assert len(TABLE) >= 40

    @pytest.mark.parametrize(
        ("service", "argument", "source", "target", "action", "resolved",
         "name", "words"),
        TABLE,
        ids=[f"{r[0]}{r[1]}:{r[2]}->{r[3]}" for r in TABLE],
    )  # fmt: skip
    def test_decision_matches_qrexec(
        self,
        policy: PolicySet,
        dom0: tuple[Path, Path],
        service: str,
        argument: str,
        source: str,
        target: str,
        action: str,
        resolved: str | None,
        name: str | None,
        words: tuple[str, ...] | None,
    ) -> None:
        """If a request is evaluated, action, target, file and line match."""
        decision = _evaluate(policy, Request(service, argument, source, target))

        assert (decision.action, decision.target) == (action, resolved), (
            decision.reason
        )
        if name is None or words is None:
            assert (decision.file, decision.line) == (None, None)
        else:
            path = _path_of(dom0, name)
            assert decision.file is not None
            assert decision.file.resolve() == path.resolve()
            assert decision.line == _line_of(path, words)


def _set(*lines: str) -> PolicySet:
    return PolicySet(
        rules=tuple(
            parse_rule_line(line, "/p/30-t.policy", n)
            for n, line in enumerate(lines, start=1)
        )
    )


class TestAsk:
    """The choices of an ask, as qrexec's collect_targets_for_ask makes them."""

    def test_choices_are_every_qube_but_source_dom0_internal_denied(
        self, policy: PolicySet
    ) -> None:
        """If @anyvm is asked, source, dom0, internal, denied are left out."""
        decision = _evaluate(
            policy, Request("qubes.Filecopy", "+", "work", "@default")
        )

        left_out = {"dom0", "work", "preload-int", "vault"}
        expected = {n for n in SYSTEM.names() if n not in left_out}
        assert set(decision.targets_for_ask) == expected | {
            "@dispvm:default-dvm"
        }
        assert list(decision.targets_for_ask) == sorted(
            decision.targets_for_ask
        )

    def test_redirect_is_the_only_choice(self, policy: PolicySet) -> None:
        """If ask has target=dom0, dom0 is the only choice, not preselected."""
        decision = _evaluate(
            policy, Request("nexus.LinkRequest", "+web.80", "work", "personal")
        )

        assert (decision.targets_for_ask, decision.target) == (("dom0",), None)

    def test_autostart_no_keeps_running_targets_only(
        self, policy: PolicySet
    ) -> None:
        """If ask has autostart=no, halted qubes and @dispvm are dropped."""
        decision = _evaluate(
            policy, Request("test.AskNoStart", "+", "work", "personal")
        )

        expected = {
            d.name
            for d in SYSTEM.domains()
            if d.power_state == "Running"
            and d.name not in {"dom0", "work"}
            and not d.internal
        }
        assert set(decision.targets_for_ask) == expected
        assert decision.autostart is False

    def test_default_dispvm_expands_to_source_template(
        self, policy: PolicySet
    ) -> None:
        """If default_target=@dispvm, it becomes the source's dispvm base."""
        decision = _evaluate(
            policy, Request("test.AskDefault", "+", "work", "personal")
        )

        assert decision.target == "@dispvm:default-dvm"

    def test_default_outside_choices_is_dropped(
        self, policy: PolicySet
    ) -> None:
        """If default_target is not a choice, there is no default."""
        decision = _evaluate(
            policy, Request("test.AskOutside", "+", "work", "db")
        )

        assert (decision.action, decision.targets_for_ask) == ("ask", ("db",))
        assert decision.target is None

    def test_earlier_deny_removes_a_choice(self) -> None:
        """If a deny comes before the ask, its target is not offered."""
        policy = _set("s * work personal deny", "s * work @anyvm ask")

        decision = policy.evaluate(Request("s", "+", "work", "db"), SYSTEM)

        assert "personal" not in decision.targets_for_ask
        assert "db" in decision.targets_for_ask

    def test_later_deny_does_not_remove_a_choice(self) -> None:
        """If a deny comes after the ask, its target is still offered."""
        policy = _set("s * work @anyvm ask", "s * work personal deny")

        decision = policy.evaluate(Request("s", "+", "work", "db"), SYSTEM)

        assert "personal" in decision.targets_for_ask

    def test_wildcard_offers_dom0(self) -> None:
        """If the ask rule's target is *, dom0 is among the choices."""
        policy = _set("s * work * ask")

        decision = policy.evaluate(Request("s", "+", "work", "db"), SYSTEM)

        assert "dom0" in decision.targets_for_ask

    def test_unknown_source_is_denied(self) -> None:
        """If the source is not a known qube, ask cannot collect; deny."""
        policy = _set("s * @anyvm @anyvm ask")

        decision = policy.evaluate(Request("s", "+", "ghost", "db"), SYSTEM)

        assert decision.action == "deny"
        assert "unknown source" in decision.reason


class TestDecisionFields:
    """notify, user, autostart and the reason."""

    def test_deny_notify_no_is_kept(self, policy: PolicySet) -> None:
        """If a deny says notify=no, the decision does not notify."""
        decision = _evaluate(
            policy, Request("qubes.Filecopy", "+", "work", "vault")
        )

        assert (decision.action, decision.notify) == ("deny", False)

    def test_deny_notifies_by_default(self, policy: PolicySet) -> None:
        """If a deny has no notify=, the decision notifies."""
        decision = _evaluate(
            policy, Request("qubes.VMShell", "+", "work", "personal")
        )

        assert decision.notify is True

    def test_allow_carries_user_and_notify(self, policy: PolicySet) -> None:
        """If allow has user= and notify=yes, both are in the decision."""
        decision = _evaluate(policy, Request("test.User", "+", "work", "dom0"))

        assert (decision.user, decision.notify) == ("root", True)

    def test_allow_without_user_is_default_user(
        self, policy: PolicySet
    ) -> None:
        """If allow has no user=, the decision's user is None."""
        decision = _evaluate(
            policy, Request("qubes.GetDate", "+", "work", "@default")
        )

        assert (decision.user, decision.notify, decision.autostart) == (
            None,
            False,
            True,
        )

    def test_rule_is_attached(self, policy: PolicySet) -> None:
        """If a rule decides, the decision carries that rule."""
        decision = _evaluate(policy, Request("test.Loop", "+", "work", "work"))

        assert decision.rule == parse_rule_line(
            "test.Loop * @anyvm @anyvm allow", "x", 1
        )
        assert "loopback" in decision.reason

    def test_as_dict_is_json_ready(self, policy: PolicySet) -> None:
        """If a decision is turned into a dict, paths become strings."""
        decision = _evaluate(
            policy, Request("qubes.GetDate", "+", "work", "@default")
        )

        data = decision.as_dict()

        assert data["action"] == "allow"
        assert data["file"] == str(decision.file)
        assert data["line"] == decision.line


class TestMatching:
    """Token matching details."""

    @pytest.mark.parametrize("target", ["dom0", "@adminvm", f"uuid:{ZERO}"])
    @pytest.mark.parametrize("rule_target", ["dom0", "@adminvm"])
    def test_every_dom0_spelling_matches(
        self, target: str, rule_target: str
    ) -> None:
        """If dom0 is spelt any of qrexec's three ways, the rule matches."""
        policy = _set(f"s * work {rule_target} allow")

        decision = policy.evaluate(Request("s", "+", "work", target), SYSTEM)

        assert decision.action == "allow"

    def test_adminvm_target_resolves_to_dom0_but_uuid_is_kept(self) -> None:
        """If @adminvm is allowed it becomes dom0; uuid:0 stays as given."""
        policy = _set("s * work @adminvm allow")

        by_keyword = policy.evaluate(
            Request("s", "+", "work", "@adminvm"), SYSTEM
        )
        by_uuid = policy.evaluate(
            Request("s", "+", "work", f"uuid:{ZERO}"), SYSTEM
        )

        assert (by_keyword.target, by_uuid.target) == ("dom0", f"uuid:{ZERO}")

    def test_anyvm_excludes_dom0(self) -> None:
        """If the rule targets @anyvm, a call to dom0 does not match it."""
        policy = _set("s * @anyvm @anyvm allow")

        decision = policy.evaluate(Request("s", "+", "work", "dom0"), SYSTEM)

        assert decision.action == "deny"

    def test_uuid_target_matches_a_name_rule(self) -> None:
        """If the caller names a qube by uuid:, a rule by name matches."""
        policy = _set("s * personal work allow")

        decision = policy.evaluate(
            Request("s", "+", "personal", f"uuid:{WORK_UUID}"), SYSTEM
        )

        assert decision.action == "allow"

    def test_type_source_matches_by_class(self) -> None:
        """If the source column is @type:TemplateVM, only templates match."""
        policy = _set("s * @type:TemplateVM dom0 allow")

        template = policy.evaluate(
            Request("s", "+", "fedora-42", "dom0"), SYSTEM
        )
        app = policy.evaluate(Request("s", "+", "work", "dom0"), SYSTEM)

        assert (template.action, app.action) == ("allow", "deny")

    def test_dispvm_source_tokens_never_match(self) -> None:
        """If the source is @dispvm:..., it never matches, as in qrexec."""
        policy = _set(
            "s * @dispvm:default-dvm dom0 allow",
            "s * @dispvm:@tag:dvm-ok dom0 allow",
        )

        decision = policy.evaluate(
            Request("s", "+", "disp1234", "dom0"), SYSTEM
        )

        assert decision.action == "deny"

    def test_autostart_no_allows_dom0_and_refuses_dispvm(self) -> None:
        """If autostart=no, dom0 is fine and a new disposable is not."""
        policy = _set(
            "s * work dom0 allow autostart=no",
            "s * work @dispvm allow autostart=no",
        )

        to_dom0 = policy.evaluate(Request("s", "+", "work", "dom0"), SYSTEM)
        to_disp = policy.evaluate(Request("s", "+", "work", "@dispvm"), SYSTEM)

        assert (to_dom0.action, to_disp.action) == ("allow", "deny")
        assert "autostart" in to_disp.reason

    def test_matching_rules_lists_every_match_in_order(
        self, policy: PolicySet
    ) -> None:
        """If several rules match, all are listed, runtime file first."""
        request = Request("nexus.Connect", "+postgres.5432", "work", "db")

        rules = policy.matching_rules(request, SYSTEM)

        assert [(r.filepath.name, r.action) for r in rules if r.filepath] == [
            ("45-nexus-links.policy", "allow"),
            ("50-nexus.policy", "deny"),
        ]


class TestRefusals:
    """Requests and sets that are denied before any rule is read."""

    @pytest.mark.parametrize("target", ["@anyvm", "*", "@tag:x", "@type:AppVM"])
    def test_invalid_intended_target_is_denied(
        self, policy: PolicySet, target: str
    ) -> None:
        """If the caller's target is not a valid intended target, deny."""
        decision = _evaluate(
            policy, Request("qubes.GetDate", "+", "work", target)
        )

        assert decision.action == "deny"
        assert "invalid intended target token" in decision.reason

    def test_argument_without_plus_is_denied(self, policy: PolicySet) -> None:
        """If the argument does not start with +, the request is denied."""
        decision = _evaluate(
            policy, Request("qubes.GetDate", "", "work", "@default")
        )

        assert decision.action == "deny"

    def test_errored_set_denies_and_says_why(self) -> None:
        """If the set has errors, every request is denied with the first."""
        policy = PolicySet(
            rules=_set("* * @anyvm @anyvm allow").rules,
            errors=("/p/x.policy:3: invalid action: 'permit'",),
        )

        decision = policy.evaluate(Request("s", "+", "work", "db"), SYSTEM)

        assert decision.action == "deny"
        assert "/p/x.policy:3: invalid action" in decision.reason
        assert decision.rule is None

    @given(
        service=st.text(max_size=12),
        argument=st.text(max_size=8),
        source=st.sampled_from([*SYSTEM.names(), "ghost", "", "@adminvm"]),
        target=st.one_of(
            st.text(max_size=12),
            st.sampled_from(
                ["@dispvm", "@dispvm:default-dvm", "@dispvm:vault", "@default"]
            ),
        ),
    )
    def test_any_request_gets_a_decision(
        self, service: str, argument: str, source: str, target: str
    ) -> None:
        """If any strings are evaluated, a decision comes back, no error."""
        policy = _set(
            "* * @anyvm @anyvm ask",
            "* * @anyvm @dispvm:@tag:dvm-ok allow",
            "* * @tag:nexus-guest @default allow target=@dispvm",
        )

        decision = policy.evaluate(
            Request(service, argument, source, target), SYSTEM
        )

        assert decision.action in {"allow", "deny", "ask"}


class TestSystemInfo:
    """Reading qubesd's system info."""

    def test_uuid_alias_finds_the_qube(self) -> None:
        """If a qube has a UUID, uuid:UUID finds the same qube."""
        assert SYSTEM.get(f"uuid:{WORK_UUID}") == SYSTEM.get("work")
        assert f"uuid:{WORK_UUID}" not in set(SYSTEM.names())

    @pytest.mark.parametrize(
        "data",
        [
            {},
            {"domains": []},
            {"domains": {"x": {"tags": []}}},
            {"domains": {"x": {"type": "AppVM", "tags": "web"}}},
            {"domains": {"x": {"type": "AppVM", "template_for_dispvms": 1}}},
            {"domains": {"x": {"type": "AppVM", "default_dispvm": 3}}},
        ],
        ids=[
            "no-domains",
            "domains-not-mapping",
            "no-type",
            "tags-not-list",
            "flag-not-bool",
            "dispvm-not-str",
        ],
    )
    def test_malformed_info_is_refused(self, data: dict[str, object]) -> None:
        """If the system info has a wrong shape, ValueError is raised."""
        with pytest.raises(ValueError):
            SystemInfo.from_dict(data)


def _legacy_layout(root: Path, shared_dir: Path) -> tuple[Path, Path]:
    source = shared_dir / "fixtures" / "qubes-policy"
    persistent = root / "etc" / "qubes" / "policy.d"
    legacy = root / "etc" / "qubes-rpc" / "policy"
    shutil.copytree(source / "policy.d", persistent)
    shutil.copytree(source / "legacy-qubes-rpc-policy", legacy)
    (legacy / "include").mkdir()
    for name in ("admin-local-ro", "admin-local-rwx"):
        (legacy / "include" / name).symlink_to(
            Path("../../../qubes/policy.d/include") / name
        )
    with (persistent / "include" / "admin-local-rwx").open("a") as f:
        f.write("mgmt @tag:created-by-mgmt allow,target=dom0\n")
    return persistent, legacy


#: Upgraded dom0: legacy per-service files are read by 35-compat.policy,
#: which sorts before 90-default.policy, so they decide first. The words
#: locating a line are as written in the file (old syntax uses ``$``).
COMPAT_TABLE = [
    ("qubes.Filecopy", "work", "personal", "ask", None, "qubes.Filecopy",
     ("$anyvm", "$anyvm", "ask")),
    ("qubes.GetDate", "untrusted", "@default", "deny", None, "qubes.GetDate",
     ("$tag:anon-vm",)),
    ("qubes.GetDate", "work", "@default", "allow", "dom0", "qubes.GetDate",
     ("$anyvm", "$anyvm", "allow")),
    ("qubes.OpenInVM", "work", "@dispvm", "allow", "@dispvm:default-dvm",
     "qubes.OpenInVM", ("$anyvm", "$dispvm")),
    ("qubes.FeaturesRequest", "work", "dom0", "allow", "dom0",
     "qubes.FeaturesRequest", ("$anyvm", "dom0")),
    ("qubes.UpdatesProxy", "fedora-42", "@default", "allow", "sys-net",
     "90-default.policy", ("qubes.UpdatesProxy", "*", "@type:TemplateVM")),
    ("policy.RegisterArgument", "work", "dom0", "deny", None,
     "90-default.policy", ("policy.RegisterArgument", "*", "@anyvm", "dom0")),
    ("admin.vm.volume.Import", "mgmt", "created-vm", "allow", "dom0",
     "include/admin-local-rwx", ("mgmt",)),
]  # fmt: skip


class TestCompatTable:
    """Decisions of an upgraded dom0 with the legacy files in place."""

    @pytest.mark.parametrize(
        ("service", "source", "target", "action", "resolved", "name", "words"),
        COMPAT_TABLE,
        ids=[f"{r[0]}:{r[1]}->{r[2]}" for r in COMPAT_TABLE],
    )
    def test_decision_matches_qrexec(
        self,
        tmp_path: Path,
        shared_dir: Path,
        service: str,
        source: str,
        target: str,
        action: str,
        resolved: str | None,
        name: str,
        words: tuple[str, ...],
    ) -> None:
        """If legacy files exist, compat rules decide where qrexec says."""
        persistent, legacy = _legacy_layout(tmp_path, shared_dir)
        policy = load_policy_set(None, persistent, legacy)
        assert policy.errors == ()

        decision = policy.evaluate(
            Request(service, "+", source, target), SYSTEM
        )

        assert (decision.action, decision.target) == (action, resolved)
        path = legacy / name if (legacy / name).exists() else persistent / name
        assert decision.file is not None
        assert decision.file.resolve() == path.resolve()
        assert decision.line == _line_of(path, words)
