# SPDX-License-Identifier: MIT
"""Tests of policy evaluation rules, each on a small hand-written set."""

from __future__ import annotations

import json
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

DATA = Path(__file__).resolve().parent / "data" / "policy"
SYSTEM = SystemInfo.from_dict(json.loads((DATA / "system.json").read_text()))
ZERO = "00000000-0000-0000-0000-000000000000"
WORK_UUID = "3f1e2d4c-0000-4000-8000-000000000001"
#: General rules that follow the admin's file, like 90-default.policy.
REST_POLICY = """\
qubes.Filecopy  * @anyvm @anyvm ask
qubes.VMShell   * @anyvm @anyvm deny
qubes.GetDate   * @anyvm @anyvm allow target=dom0
nexus.Connect   * @anyvm @anyvm deny
"""


@pytest.fixture(name="policy", scope="module")
def _policy(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    """The sample admin file, a runtime links file and general rules."""
    root = tmp_path_factory.mktemp("policy")
    runtime, persistent = root / "run", root / "etc"
    runtime.mkdir()
    persistent.mkdir()
    (runtime / "45-nexus-links.policy").write_bytes(
        (DATA / "45-nexus-links.policy").read_bytes()
    )
    (persistent / "30-user.policy").write_bytes(
        (DATA / "30-user.policy").read_bytes()
    )
    (persistent / "90-rest.policy").write_text(REST_POLICY)
    policy = load_policy_set(runtime, persistent)
    assert policy.errors == ()
    return policy


def _evaluate(policy: PolicySet, request: Request) -> Decision:
    return policy.evaluate(request, SYSTEM)


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
            ("90-rest.policy", "deny"),
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
