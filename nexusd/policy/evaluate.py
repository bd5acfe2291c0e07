# SPDX-License-Identifier: MIT
"""Evaluation of a qrexec request against a loaded policy set.

Follows qrexec's ``AbstractPolicy.evaluate`` and the ``Allow``/``Ask``/
``Deny`` actions, including what ``AllowResolution.execute`` and the ask
agent refuse (loopback, no GuiVM), so a :class:`Decision` is what qrexec
would finally do. Any fault during evaluation is a denial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from heapq import merge
from pathlib import Path

import structlog

from nexusd.policy.grammar import Rule, TokenKind, classify_token
from nexusd.policy.system import SystemInfo, is_dom0

__all__ = ["Decision", "PolicySet", "Request"]

log = structlog.get_logger()

_K = TokenKind
_DISPVM_PREFIX = "@dispvm:"


@dataclass(frozen=True)
class Request:
    """A qrexec call as policy sees it.

    Attributes:
        service: the service name, e.g. ``nexus.ContainerCreate``.
        argument: ``+ARG``, or ``+`` when the call has none.
        source: the calling qube (set by qrexec, never by the caller).
        target: the caller's intended target; ``@default`` (or ``""``)
            when it gave none.
    """

    service: str
    argument: str
    source: str
    target: str = "@default"


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one request.

    Attributes:
        action: ``"allow"``, ``"deny"`` or ``"ask"``.
        target: the resolved target of an allow (``dom0`` for any spelling
            of dom0, ``@dispvm:NAME`` for a new disposable); the default
            target of an ask, if any; ``None`` for deny.
        targets_for_ask: the choices offered by an ask, sorted.
        autostart: whether qrexec may start a halted target.
        notify: whether qrexec would notify the user.
        user: the ``user=`` of the rule, ``None`` for the default user.
        file: the file of the deciding rule, ``None`` if no rule decided.
        line: its line (``None`` for compat rules and without a rule).
        reason: why, in words, for logs and ``nexusctl``.
        rule: the deciding rule, if any.
    """

    action: str
    target: str | None = None
    targets_for_ask: tuple[str, ...] = ()
    autostart: bool = True
    notify: bool = True
    user: str | None = None
    file: Path | None = None
    line: int | None = None
    reason: str = ""
    rule: Rule | None = field(default=None, compare=False)

    @property
    def allowed(self) -> bool:
        """Whether the call goes through without asking anyone."""
        return self.action == "allow"

    def as_dict(self) -> dict[str, object]:
        """Return the decision as JSON-ready values (no ``rule``)."""
        return {
            "action": self.action,
            "target": self.target,
            "targets_for_ask": list(self.targets_for_ask),
            "autostart": self.autostart,
            "notify": self.notify,
            "user": self.user,
            "file": str(self.file) if self.file is not None else None,
            "line": self.line,
            "reason": self.reason,
        }


class _Refused(Exception):
    """Internal: the request is denied for the given reason."""

    def __init__(self, reason: str, *, notify: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


def _where(rule: Rule) -> str:
    return f"{rule.filepath}:{rule.lineno}"


@dataclass(frozen=True)
class _Intended:
    """The caller's intended target after qrexec's ``verify``."""

    kind: TokenKind
    text: str
    value: str


def _intended_target(request: Request, system: SystemInfo) -> _Intended:
    text = request.target or "@default"
    try:
        kind, value = classify_token(text, "intended target")
    except ValueError as err:
        raise _Refused(str(err)) from err
    if kind is _K.NAME and text not in system:
        return _Intended(_K.DEFAULT, "@default", "")
    if kind is _K.DISPVM_TEMPLATE:
        template = system.get(value)
        if template is None or not template.template_for_dispvms:
            raise _Refused(f"not a template for dispvm: {value}")
    return _Intended(kind, text, value)


def _match_strings(system: SystemInfo, mine: str, other: str | None) -> bool:
    """qrexec's ``match_strings``: equality, with ``uuid:`` resolved."""
    if other is None:
        return False
    if mine.startswith("uuid:"):
        if other.startswith("uuid:"):
            return mine == other
        domain = system.get(other)
        return domain is not None and mine[5:] == domain.uuid
    if other.startswith("uuid:"):
        domain = system.get(mine)
        return domain is not None and other[5:] == domain.uuid
    return mine == other


def _default_dispvm(source: str, system: SystemInfo) -> str | None:
    """``@dispvm:NAME`` for the source's ``default_dispvm``, if set."""
    domain = system.get(source)
    if domain is None or domain.default_dispvm is None:
        return None
    return _DISPVM_PREFIX + domain.default_dispvm


def _source_matches(rule: Rule, source: str, system: SystemInfo) -> bool:
    kind = rule.source_kind
    if kind is _K.NAME:
        if is_dom0(rule.source):
            return is_dom0(source)
        return _match_strings(system, rule.source, source)
    if kind is _K.WILDCARD:
        return True
    if kind is _K.ADMINVM:
        return is_dom0(source)
    if kind is _K.ANYVM:
        return not is_dom0(source)
    domain = system.get(source)
    if kind is _K.TYPE:
        return domain is not None and domain.type == rule.source_value
    if kind is _K.TAG:
        return domain is not None and rule.source_value in domain.tags
    # @dispvm:VM and @dispvm:@tag:T parse as sources, but qrexec compares
    # them with the source's plain name, which never matches.
    return False


def _target_matches(
    rule: Rule, intended: _Intended, source: str, system: SystemInfo
) -> bool:
    kind, other = rule.target_kind, intended.text
    if kind is _K.NAME:
        if is_dom0(rule.target):
            return is_dom0(other)
        return _match_strings(system, rule.target, other)
    if kind is _K.WILDCARD:
        return True
    if kind is _K.ADMINVM:
        return is_dom0(other)
    if kind is _K.ANYVM:
        return not is_dom0(other)
    if kind in (_K.DEFAULT, _K.DISPVM):
        return rule.target == other
    if kind in (_K.TYPE, _K.TAG):
        domain = system.get(other)
        if domain is None:
            return False
        if kind is _K.TYPE:
            return domain.type == rule.target_value
        return rule.target_value in domain.tags
    template: str | None = other
    if intended.kind is _K.DISPVM:
        template = _default_dispvm(source, system)
    elif intended.kind is not _K.DISPVM_TEMPLATE:
        return False
    if template is None:
        return False
    if kind is _K.DISPVM_TEMPLATE:
        if intended.kind is _K.DISPVM:
            return rule.target == template
        return _match_strings(
            system, rule.target_value, template[len(_DISPVM_PREFIX) :]
        )
    domain = system.get(template[len(_DISPVM_PREFIX) :])
    return (
        domain is not None
        and domain.template_for_dispvms
        and rule.target_value in domain.tags
    )


def _rule_matches_but_target(
    rule: Rule, request: Request, system: SystemInfo
) -> bool:
    return (
        (rule.service == "*" or rule.service == request.service)
        and (rule.argument == "*" or rule.argument == request.argument)
        and _source_matches(rule, request.source, system)
    )


def _may_skip_autostart(target: str, system: SystemInfo) -> bool:
    """qrexec's ``allow_no_autostart``: may this target be used unstarted?"""
    if is_dom0(target):
        return True
    if target.startswith("@dispvm"):
        return False
    domain = system.get(target)
    return domain is not None and domain.power_state == "Running"


def _expand(token: str, system: SystemInfo) -> set[str]:
    """Targets a rule's target token offers to ``ask`` (qrexec's expand)."""
    kind, value = classify_token(token, "target")
    found: set[str] = set()
    if kind is _K.NAME:
        if token in system:
            found.add(token)
    elif kind is _K.ADMINVM or kind is _K.DISPVM:
        found.add(token)
    elif kind in (_K.WILDCARD, _K.ANYVM):
        for domain in system.domains():
            if kind is _K.WILDCARD or not is_dom0(domain.name):
                found.add(domain.name)
            if domain.template_for_dispvms:
                found.add(_DISPVM_PREFIX + domain.name)
        found.add("@dispvm")
    elif kind is _K.TYPE:
        found.update(d.name for d in system.domains() if d.type == value)
    elif kind is _K.TAG:
        found.update(d.name for d in system.domains() if value in d.tags)
    elif kind is _K.DISPVM_TEMPLATE:
        named = system.get(value)
        if named is None:
            reason = f"ask: no such qube for {token!r}"
            raise _Refused(reason)
        if named.template_for_dispvms:
            found.add(token)
    elif kind is _K.DISPVM_TAG:
        found.update(
            _DISPVM_PREFIX + d.name
            for d in system.domains()
            if d.template_for_dispvms and value in d.tags
        )
    resolved: set[str] = set()
    for target in found:
        try:
            resolved.add(system.to_name(target))
        except KeyError:
            continue
    return resolved


@dataclass(frozen=True)
class PolicySet:
    """A loaded policy set: its rules in order, and its errors.

    When ``errors`` is not empty the set is broken, as qrexec would find it,
    and :meth:`evaluate` denies every request.
    """

    rules: tuple[Rule, ...] = ()
    errors: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    @cached_property
    def _by_service(self) -> dict[tuple[str, str], list[int]]:
        """Positions of the rules by their (service, argument) columns."""
        index: dict[tuple[str, str], list[int]] = {}
        for position, rule in enumerate(self.rules):
            index.setdefault((rule.service, rule.argument), []).append(position)
        return index

    def _candidates(self, request: Request) -> list[Rule]:
        """The rules whose service and argument columns can match, in
        policy order.

        A ``*`` service takes only a ``*`` argument (the grammar refuses
        anything else), so three column pairs cover every match; the other
        rules cannot match and are not looked at, which keeps a request
        against thousands of link lines as cheap as against a few.
        """
        index = self._by_service
        keys = dict.fromkeys(
            (
                (request.service, request.argument),
                (request.service, "*"),
                ("*", "*"),
            )
        )
        found = [index.get(key, []) for key in keys]
        return [self.rules[position] for position in merge(*found)]

    def evaluate(self, request: Request, system: SystemInfo) -> Decision:
        """Decide *request* as qrexec would; never raises."""
        if self.errors:
            reason = (
                f"policy set has {len(self.errors)} error(s), denying"
                f" everything; first: {self.errors[0]}"
            )
            return Decision("deny", reason=reason)
        try:
            return self._evaluate(request, system)
        except _Refused as refusal:
            return Decision(
                "deny", notify=refusal.notify, reason=refusal.reason
            )
        except Exception:  # fail closed: a fault is a denial
            log.exception("policy_evaluation_failed", service=request.service)
            return Decision("deny", reason="internal error during evaluation")

    def matching_rules(
        self, request: Request, system: SystemInfo
    ) -> list[Rule]:
        """Return every rule that matches *request*, in policy order."""
        try:
            intended = _intended_target(request, system)
        except _Refused:
            return []
        return [
            rule
            for rule in self._candidates(request)
            if _rule_matches_but_target(rule, request, system)
            and _target_matches(rule, intended, request.source, system)
        ]

    def _evaluate(self, request: Request, system: SystemInfo) -> Decision:
        if not request.argument.startswith("+"):
            raise _Refused("argument must start with +")
        intended = _intended_target(request, system)
        for rule in self._candidates(request):
            if _rule_matches_but_target(
                rule, request, system
            ) and _target_matches(rule, intended, request.source, system):
                return self._apply(rule, request, intended, system)
        raise _Refused("no matching rule found")

    def _apply(
        self,
        rule: Rule,
        request: Request,
        intended: _Intended,
        system: SystemInfo,
    ) -> Decision:
        try:
            if rule.action == "allow":
                return _allow(rule, request, intended, system)
            if rule.action == "ask":
                return self._ask(rule, request, system)
        except _Refused as refusal:
            return Decision(
                "deny",
                notify=refusal.notify,
                file=rule.filepath,
                line=rule.lineno,
                reason=refusal.reason,
                rule=rule,
            )
        return Decision(
            "deny",
            notify=rule.notify,
            file=rule.filepath,
            line=rule.lineno,
            reason=f"denied by policy {_where(rule)}",
            rule=rule,
        )

    def _ask(
        self, rule: Rule, request: Request, system: SystemInfo
    ) -> Decision:
        redirect = rule.param("target")
        targets: set[str]
        if redirect is not None:
            targets = {"dom0" if is_dom0(redirect) else redirect}
        else:
            targets = self._targets_for_ask(request, system)
        if not rule.autostart:
            targets = {t for t in targets if _may_skip_autostart(t, system)}
        if not targets:
            reason = (
                f"policy define 'ask' action at {_where(rule)} but no target"
                " is available to choose from"
            )
            raise _Refused(reason)
        default = rule.param("default_target")
        if default == "@dispvm":
            default = _default_dispvm(request.source, system)
        elif is_dom0(default):
            default = "dom0"
        if default not in targets:
            default = None
        source = system.get(request.source)
        if source is None:
            raise _Refused(f"ask: unknown source qube {request.source!r}")
        if source.guivm is None:
            reason = f"ask at {_where(rule)}: the source has no GuiVM to ask in"
            raise _Refused(reason)
        return Decision(
            "ask",
            target=default,
            targets_for_ask=tuple(sorted(targets)),
            autostart=rule.autostart,
            notify=rule.notify,
            user=rule.user,
            file=rule.filepath,
            line=rule.lineno,
            reason=f"ask by policy {_where(rule)}",
            rule=rule,
        )

    def _targets_for_ask(
        self, request: Request, system: SystemInfo
    ) -> set[str]:
        """qrexec's ``collect_targets_for_ask``."""
        source = system.get(request.source)
        if source is None:
            raise _Refused(f"ask: unknown source qube {request.source!r}")
        targets: set[str] = set()
        for rule in reversed(self._candidates(request)):
            if not _rule_matches_but_target(rule, request, system):
                continue
            token = rule.target
            if rule.action != "deny":
                token = rule.param("target") or rule.target
            expansion = _expand(token, system)
            if rule.action == "deny":
                targets -= expansion
            else:
                targets |= expansion
        if "@dispvm" in targets:
            targets.discard("@dispvm")
            default = _default_dispvm(request.source, system)
            if default is not None:
                targets.add(default)
        if "@adminvm" in targets:
            targets.discard("@adminvm")
            targets.add("dom0")
        targets.discard(source.name)
        if source.uuid:
            targets.discard(f"uuid:{source.uuid}")
        for target in list(targets):
            name = target.removeprefix(_DISPVM_PREFIX)
            domain = system.get(name)
            if domain is not None and domain.internal:
                targets.discard(target)
        return targets


def _allow(
    rule: Rule, request: Request, intended: _Intended, system: SystemInfo
) -> Decision:
    redirect = rule.param("target")
    if redirect is not None:
        chosen = _intended_target(
            Request(
                request.service, request.argument, request.source, redirect
            ),
            system,
        )
    else:
        chosen = intended
    target = chosen.text
    if chosen.kind is _K.DEFAULT:
        reason = (
            f"policy define 'allow' action at {_where(rule)} but no target is"
            " specified by caller or policy"
        )
        raise _Refused(reason)
    if chosen.kind is _K.DISPVM:
        default = _default_dispvm(request.source, system)
        if default is None:
            reason = (
                f"policy define 'allow' action to @dispvm at {_where(rule)}"
                " but no DispVM base is set for this VM"
            )
            raise _Refused(reason)
        target = default
    elif target == "@adminvm":
        target = "dom0"
    if not rule.autostart and not _may_skip_autostart(target, system):
        reason = f"target {target} is denied because it would require autostart"
        raise _Refused(reason, notify=rule.notify)
    if request.source == target:
        raise _Refused("loopback qrexec connection not supported")
    if target.startswith(_DISPVM_PREFIX) and (
        system.get(target[len(_DISPVM_PREFIX) :]) is None
    ):
        raise _Refused(f"no such disposable template: {target}")
    return Decision(
        "allow",
        target=target,
        autostart=rule.autostart,
        notify=rule.notify,
        user=rule.user,
        file=rule.filepath,
        line=rule.lineno,
        reason=f"allowed by policy {_where(rule)}",
        rule=rule,
    )
