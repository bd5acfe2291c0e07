# SPDX-License-Identifier: MIT
"""Tests of one policy rule: tokens per column, parameters, parse, render."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexusd.policy import (
    PolicySyntaxError,
    Rule,
    TokenKind,
    classify_token,
    parse_rule_line,
    render_rule,
)
from nexusd.policy.grammar import parse_service_rule_line

FILE = Path("/etc/qubes/policy.d/30-user.policy")


def _syntax_error(line: str) -> PolicySyntaxError:
    with pytest.raises(PolicySyntaxError) as info:
        parse_rule_line(line, FILE, 7)
    return info.value


class TestParseRuleLine:
    """Parsing of one R4.1+ rule line."""

    def test_reads_every_column_and_parameter(self) -> None:
        """If a rule has all columns and parameters, each lands in place."""
        line = "qubes.Filecopy  +x\t@tag:work  @anyvm  ask default_target=vault"

        rule = parse_rule_line(line, FILE, 3)

        assert rule.service == "qubes.Filecopy"
        assert rule.argument == "+x"
        assert rule.source == "@tag:work"
        assert rule.target == "@anyvm"
        assert rule.action == "ask"
        assert rule.params == (("default_target", "vault"),)
        assert (rule.filepath, rule.lineno) == (FILE, 3)

    def test_orders_parameters_canonically(self) -> None:
        """If parameters come in another order, the rules are still equal."""
        first = parse_rule_line("s * a b allow user=u target=dom0", FILE, 1)
        second = parse_rule_line("s * a b allow target=dom0 user=u", FILE, 2)

        assert first == second

    def test_ignores_location_in_equality(self) -> None:
        """If two rules differ only in file and line, they are equal."""
        first = parse_rule_line("s * a b deny", FILE, 1)
        second = parse_rule_line("s * a b deny", Path("/other"), 99)

        assert first == second

    def test_defaults_follow_qrexec(self) -> None:
        """If no parameter is given, deny notifies and allow autostarts."""
        deny = parse_rule_line("s * a b deny", FILE, 1)
        allow = parse_rule_line("s * a b allow", FILE, 1)

        assert (deny.notify, allow.notify, allow.autostart) == (
            True,
            False,
            True,
        )
        assert allow.user is None

    def test_message_has_path_and_line(self) -> None:
        """If a line is bad, the error reads path:line: reason."""
        err = _syntax_error("qubes.Foo * @anyvm @anyvm")

        assert str(err) == f"{FILE}:7: wrong number of fields"
        assert (err.filepath, err.lineno) == (FILE, 7)
        assert err.reason == "wrong number of fields"

    @pytest.mark.parametrize(
        ("line", "reason"),
        [
            pytest.param("", "wrong number of fields", id="empty"),
            pytest.param("a * b c", "wrong number of fields", id="four-fields"),
            pytest.param(
                "qubes/Foo * @anyvm @anyvm allow",
                "contains invalid characters",
                id="service-slash",
            ),
            pytest.param(
                "qubes.Föo * @anyvm @anyvm allow",
                "contains invalid characters",
                id="service-non-ascii",
            ),
            pytest.param(
                "qubes+Foo * @anyvm @anyvm allow",
                "contains invalid characters",
                id="service-plus",
            ),
            pytest.param(
                "* +x @anyvm @anyvm allow",
                "only * argument allowed for * service",
                id="star-service-with-argument",
            ),
            pytest.param(
                "qubes.Foo x @anyvm @anyvm allow",
                "does not start with +",
                id="argument-without-plus",
            ),
            pytest.param(
                "qubes.Foo +a/b @anyvm @anyvm allow",
                "contains invalid characters",
                id="argument-slash",
            ),
            pytest.param(
                "qubes.Foo * @anything @anyvm allow",
                "invalid source token: '@anything'",
                id="unknown-at-word",
            ),
            pytest.param(
                "qubes.Foo * @tag(x) @anyvm allow",
                "invalid source token: '@tag(x)'",
                id="tag-parenthesis",
            ),
            pytest.param(
                "qubes.Foo * @tag: @anyvm allow",
                "invalid empty @tag: token",
                id="tag-empty",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @dispvm: allow",
                "invalid empty @dispvm: token",
                id="dispvm-empty",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @dispvm:@tag: allow",
                "invalid empty @dispvm:@tag: token",
                id="dispvm-tag-empty",
            ),
            pytest.param(
                "qubes.Foo * @tag:@x @anyvm allow",
                "invalid source token",
                id="tag-of-keyword",
            ),
            pytest.param(
                "qubes.Foo * @default @anyvm allow",
                "invalid source token: '@default'",
                id="default-as-source",
            ),
            pytest.param(
                "qubes.Foo * @dispvm @anyvm allow",
                "invalid source token: '@dispvm'",
                id="dispvm-as-source",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow target=@anyvm",
                "invalid redirect token: '@anyvm'",
                id="anyvm-as-redirect",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow target=*",
                "invalid redirect token: '*'",
                id="star-as-redirect",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm ask default_target=@tag:x",
                "invalid redirect token",
                id="tag-as-default-target",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow target=",
                "invalid empty redirect token",
                id="empty-redirect",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm permit",
                "invalid action: 'permit'",
                id="unknown-action",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow target=dom0 target=dom0",
                "parameter given twice: 'target'",
                id="duplicate-param",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm deny notify=maybe",
                "'notify' is 'maybe', but can be only 'yes' or 'no'",
                id="bad-notify",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow autostart=1",
                "'autostart' is '1', but can be only 'yes' or 'no'",
                id="bad-autostart",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm deny target=dom0",
                "invalid parameters for action deny",
                id="target-on-deny",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow default_target=dom0",
                "invalid parameters for action allow",
                id="allow-with-default-target",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow colour=red",
                "invalid parameters for action allow",
                id="unknown-param",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @anyvm allow target",
                "invalid action parameter syntax: 'target'",
                id="param-without-equals",
            ),
            pytest.param(
                "qubes.Foo * @anyvm @default allow",
                "allow action for @default rule must specify target=",
                id="default-target-allow-without-redirect",
            ),
        ],
    )
    def test_refuses_malformed_line(self, line: str, reason: str) -> None:
        """If a line breaks the grammar, the error names line and reason."""
        err = _syntax_error(line)

        assert str(err).startswith(f"{FILE}:7: ")
        assert reason in err.reason

    def test_accepts_ask_at_default_without_redirect(self) -> None:
        """If ask targets @default without target=, the rule is valid."""
        rule = parse_rule_line("s * @anyvm @default ask", FILE, 1)

        assert rule.target_kind is TokenKind.DEFAULT

    def test_a_hash_inside_a_line_is_a_token(self) -> None:
        """If '#' follows a rule, it is a parameter, not a comment."""
        err = _syntax_error("s * @anyvm @anyvm deny # comment")

        assert "invalid action parameter syntax: '#'" in err.reason


class TestParseServiceRuleLine:
    """Parsing of the old per-service syntax (after substitutions)."""

    def test_reads_source_target_action_and_params(self) -> None:
        """If an old line has params, they apply to the given service."""
        rule = parse_service_rule_line(
            "qubes.GetDate", "*", "@anyvm @anyvm allow target=dom0", FILE, 4
        )

        assert rule == parse_rule_line(
            "qubes.GetDate * @anyvm @anyvm allow target=dom0", FILE, 4
        )

    def test_refuses_two_fields(self) -> None:
        """If an old line lacks the action, it is a syntax error."""
        with pytest.raises(PolicySyntaxError) as info:
            parse_service_rule_line("s", "*", "@anyvm dom0", FILE, 2)

        assert info.value.reason == "wrong number of fields"


#: (token, column, allowed) from the table in QUBES-PROTOCOLS.md 4.2.
_TOKEN_TABLE = {
    "work": ("source", "target", "redirect", "intended target"),
    "uuid:11111111-2222-3333-4444-555555555555": (
        "source",
        "target",
        "redirect",
        "intended target",
    ),
    "*": ("source", "target"),
    "@anyvm": ("source", "target"),
    "@adminvm": ("source", "target", "redirect", "intended target"),
    "@default": ("target", "intended target"),
    "@type:AppVM": ("source", "target"),
    "@tag:web": ("source", "target"),
    "@dispvm": ("target", "redirect", "intended target"),
    "@dispvm:default-dvm": ("source", "target", "redirect", "intended target"),
    "@dispvm:@tag:web": ("source", "target"),
}
_COLUMNS = ("source", "target", "redirect", "intended target")


class TestClassifyToken:
    """Where each token may stand."""

    @pytest.mark.parametrize(
        ("token", "column"),
        [
            (token, column)
            for token, columns in _TOKEN_TABLE.items()
            for column in columns
        ],
    )
    def test_accepts_token_where_qrexec_does(
        self, token: str, column: str
    ) -> None:
        """If the table allows a token in a column, it classifies."""
        kind, _ = classify_token(token, column)

        assert isinstance(kind, TokenKind)

    @pytest.mark.parametrize(
        ("token", "column"),
        [
            (token, column)
            for token, columns in _TOKEN_TABLE.items()
            for column in _COLUMNS
            if column not in columns
        ],
    )
    def test_refuses_token_where_qrexec_does(
        self, token: str, column: str
    ) -> None:
        """If the table forbids a token in a column, it is refused."""
        with pytest.raises(ValueError, match=f"invalid {column} token"):
            classify_token(token, column)

    def test_splits_prefix_from_value(self) -> None:
        """If a token has a prefix, the value after it is returned."""
        assert classify_token("@dispvm:@tag:web", "target") == (
            TokenKind.DISPVM_TAG,
            "web",
        )
        assert classify_token("@dispvm:dvm", "target") == (
            TokenKind.DISPVM_TEMPLATE,
            "dvm",
        )

    def test_refuses_uuid_with_at(self) -> None:
        """If a UUID is written @uuid:, it is an unknown keyword."""
        with pytest.raises(ValueError, match="invalid source token"):
            classify_token(
                "@uuid:11111111-2222-3333-4444-555555555555", "source"
            )


class TestRuleConstructor:
    """Checks that run when a Rule is built directly."""

    def test_refuses_whitespace_in_a_field(self) -> None:
        """If a field holds a space, the rule could not render; refused."""
        with pytest.raises(PolicySyntaxError, match="whitespace"):
            Rule("s", "*", "work vm", "dom0", "deny")

    def test_refuses_whitespace_in_a_value(self) -> None:
        """If a parameter value holds a newline, the rule is refused."""
        with pytest.raises(PolicySyntaxError, match="whitespace"):
            Rule("s", "*", "work", "dom0", "allow", (("user", "a\nb"),))

    def test_refuses_empty_service(self) -> None:
        """If the service is empty, the rule is refused."""
        with pytest.raises(PolicySyntaxError, match="empty service"):
            Rule("", "*", "work", "dom0", "deny")

    def test_accepts_a_list_of_params(self) -> None:
        """If params come as a list of pairs, they are stored as a tuple."""
        rule = Rule("s", "*", "a", "b", "allow", [("target", "dom0")])  # type: ignore[arg-type]

        assert rule.params == (("target", "dom0"),)


# Strategies for valid rules.
_RPC = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._",
    min_size=1,
    max_size=20,
)
_NAME = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
    ),
    min_size=1,
    max_size=16,
).filter(lambda s: s != "*" and not s.startswith("@") and s.split() == [s])
_VALUE = _NAME.filter(lambda s: not s.startswith("@"))
_SOURCE = st.one_of(
    _NAME,
    st.sampled_from(["*", "@anyvm", "@adminvm"]),
    _VALUE.map(lambda v: f"@type:{v}"),
    _VALUE.map(lambda v: f"@tag:{v}"),
    _VALUE.map(lambda v: f"@dispvm:{v}"),
    _VALUE.map(lambda v: f"@dispvm:@tag:{v}"),
)
_TARGET = st.one_of(_SOURCE, st.sampled_from(["@default", "@dispvm"]))
_REDIRECT = st.one_of(
    _NAME,
    st.sampled_from(["@adminvm", "@dispvm"]),
    _VALUE.map(lambda v: f"@dispvm:{v}"),
)
_YESNO = st.sampled_from(["yes", "no"])
_PARAM_VALUES = {
    "target": _REDIRECT,
    "default_target": _REDIRECT,
    "user": st.one_of(st.just(""), _NAME),
    "notify": _YESNO,
    "autostart": _YESNO,
}
_ACTION_KEYS = {
    "allow": ("target", "user", "notify", "autostart"),
    "deny": ("notify",),
    "ask": ("target", "default_target", "user", "notify", "autostart"),
}


@st.composite
def _rules(draw: st.DrawFn) -> Rule:
    service = draw(st.one_of(st.just("*"), _RPC))
    if service == "*":
        argument = "*"
    else:
        argument = draw(
            st.one_of(st.just("*"), st.just("+"), _RPC.map(lambda a: "+" + a))
        )
    action = draw(st.sampled_from(sorted(_ACTION_KEYS)))
    keys = draw(st.sets(st.sampled_from(_ACTION_KEYS[action])))
    target = draw(_TARGET)
    if target == "@default" and action == "allow":
        keys.add("target")
    params = tuple((key, draw(_PARAM_VALUES[key])) for key in sorted(keys))
    return Rule(service, argument, draw(_SOURCE), target, action, params)


class TestRoundTrip:
    """render_rule and parse_rule_line are inverse."""

    @given(rule=_rules())
    def test_parse_of_render_is_identity(self, rule: Rule) -> None:
        """If a valid rule is rendered, parsing the text gives it back."""
        text = render_rule(rule)

        assert parse_rule_line(text, FILE, 1) == rule
        assert "\n" not in text

    @given(text=st.text(max_size=200))
    def test_random_text_raises_only_syntax_errors(self, text: str) -> None:
        """If any text is parsed, it is a rule or a PolicySyntaxError."""
        try:
            rule = parse_rule_line(text, FILE, 1)
        except PolicySyntaxError as err:
            assert str(err).startswith(f"{FILE}:1: ")
        else:
            assert parse_rule_line(render_rule(rule), FILE, 1) == rule

    @given(
        words=st.lists(
            st.sampled_from(
                [
                    "qubes.Foo",
                    "*",
                    "+",
                    "+a",
                    "@anyvm",
                    "@default",
                    "@dispvm",
                    "@dispvm:x",
                    "@tag:",
                    "@tag:t",
                    "allow",
                    "deny",
                    "ask",
                    "target=dom0",
                    "target=@dispvm",
                    "default_target=x",
                    "notify=yes",
                    "autostart=no",
                    "user=",
                    "=",
                ]
            ),
            max_size=9,
        )
    )
    def test_token_soup_raises_only_syntax_errors(
        self, words: list[str]
    ) -> None:
        """If policy words are shuffled, parsing never fails otherwise."""
        try:
            rule = parse_rule_line(" ".join(words), FILE, 1)
        except PolicySyntaxError:
            return
        assert parse_rule_line(render_rule(rule), FILE, 1) == rule
