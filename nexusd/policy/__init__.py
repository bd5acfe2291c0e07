# SPDX-License-Identifier: MIT
"""The qrexec policy engine: grammar, loading, evaluation, rendering.

A faithful model of qrexec's R4.1+ policy (``qrexec/policy/parser.py``) so
that nexusd and the simulated dom0 decide calls exactly as dom0 would.
"""

from __future__ import annotations

from nexusd.policy.evaluate import Decision, PolicySet, Request
from nexusd.policy.grammar import (
    PolicySyntaxError,
    Rule,
    TokenKind,
    classify_token,
    parse_rule_line,
    render_rule,
)
from nexusd.policy.loader import check_policy_set, load_policy_set
from nexusd.policy.system import Domain, SystemInfo, is_dom0

__all__ = [
    "Decision",
    "Domain",
    "PolicySet",
    "PolicySyntaxError",
    "Request",
    "Rule",
    "SystemInfo",
    "TokenKind",
    "check_policy_set",
    "classify_token",
    "is_dom0",
    "load_policy_set",
    "parse_rule_line",
    "render_rule",
]
