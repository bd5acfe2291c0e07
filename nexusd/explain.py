# SPDX-License-Identifier: MIT
"""Policy explain and check for administrators, with or without D-Bus.

``explain`` says which file and line decide ``SOURCE -> TARGET
SERVICE+ARG`` and which of nexusd's own rules (its runtime links file)
that decision shadows; ``check`` lists what in the policy set breaks nexus
services: syntax errors, nexusd's rules that another rule overrides, links
an admin rule blocks, and rules that open ``nexus.Connect`` without a link.
In dom0 the decision comes from qrexec's own parser when it can be
imported; elsewhere (and for the simulated dom0) from nexusd's engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from nexusd.config import Config
from nexusd.errors import BadArgument
from nexusd.linkpolicy import SERVICE as CONNECT
from nexusd.linkpolicy import LinkLine
from nexusd.names import is_qube_name
from nexusd.policy import (
    Decision,
    PolicySet,
    Request,
    Rule,
    SystemInfo,
    load_policy_set,
    render_rule,
)
from nexusd.policy.grammar import RPCNAME_CHARSET

__all__ = [
    "ENGINES",
    "Explanation",
    "PolicyRequest",
    "Problem",
    "check",
    "explain",
    "parse_policy_request",
    "qrexec_decide",
]

log = structlog.get_logger()

#: ``auto`` picks ``qrexec`` in dom0 when it imports, else ``nexusd``.
ENGINES = ("auto", "qrexec", "nexusd")
#: qrexec's limit on a service name with its argument (``NAME_MAX``).
SERVICE_MAX = 255
#: Longest target token: ``@dispvm:`` and a qube name, or a uuid form.
TARGET_MAX = 64
_UUID_RE = re.compile(r"\Auuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\Z")
_SERVICE_CHARSET = RPCNAME_CHARSET - {"+"}
_TARGET_KEYWORDS = frozenset({"@adminvm", "@default", "@dispvm"})
_ERROR_RE = re.compile(r"\A(?P<file>.*?):(?P<line>[0-9]+): (?P<reason>.*)\Z")


@dataclass(frozen=True)
class PolicyRequest:
    """A call to explain: all four parts checked."""

    source: str
    target: str
    service: str
    argument: str

    def as_request(self) -> Request:
        """The policy engine's form of this call."""
        return Request(self.service, self.argument, self.source, self.target)

    @property
    def service_and_arg(self) -> str:
        """``SERVICE+ARG`` (``SERVICE`` alone when there is no argument)."""
        if self.argument == "+":
            return self.service
        return self.service + self.argument


def _qube_or_uuid(text: str) -> bool:
    return text == "dom0" or is_qube_name(text) or bool(_UUID_RE.match(text))


def parse_policy_request(
    *,
    untrusted_source: object,
    untrusted_target: object,
    untrusted_service_and_arg: object,
) -> PolicyRequest:
    """Return the call to explain, each part checked as qrexec would.

    Raises:
        BadArgument: a part is not a string or breaks its grammar.
    """
    if not (
        isinstance(untrusted_source, str)
        and isinstance(untrusted_target, str)
        and isinstance(untrusted_service_and_arg, str)
    ):
        msg = "source, target and service must be strings"
        raise BadArgument(msg)
    if not _qube_or_uuid(untrusted_source):
        msg = "source must be a qube name, dom0 or uuid:UUID"
        raise BadArgument(msg)
    source = untrusted_source
    target = _parse_target(untrusted_target=untrusted_target)
    service, argument = _parse_service(
        untrusted_service_and_arg=untrusted_service_and_arg
    )
    return PolicyRequest(source, target, service, argument)


def _parse_target(*, untrusted_target: str) -> str:
    text = untrusted_target or "@default"
    if len(text) > TARGET_MAX:
        msg = f"target must be at most {TARGET_MAX} characters"
        raise BadArgument(msg)
    if text in _TARGET_KEYWORDS or _qube_or_uuid(text):
        return text
    rest = text.removeprefix("@dispvm:")
    if rest != text and _qube_or_uuid(rest):
        return text
    msg = (
        "target must be a qube name, dom0, uuid:UUID, @adminvm, @default,"
        " @dispvm or @dispvm:NAME"
    )
    raise BadArgument(msg)


def _parse_service(*, untrusted_service_and_arg: str) -> tuple[str, str]:
    text = untrusted_service_and_arg
    if not 0 < len(text) <= SERVICE_MAX:
        msg = f"service must be 1 to {SERVICE_MAX} characters"
        raise BadArgument(msg)
    service, plus, argument = text.partition("+")
    if not service or not set(service) <= _SERVICE_CHARSET:
        msg = "service name must be of [A-Za-z0-9._-]"
        raise BadArgument(msg)
    if not set(argument) <= RPCNAME_CHARSET:
        msg = "service argument must be of [A-Za-z0-9._+-]"
        raise BadArgument(msg)
    return service, "+" + argument if plus else "+"


@dataclass(frozen=True)
class Explanation:
    """Why a call is decided as it is.

    Attributes:
        request: the call.
        decision: what policy decides, with the deciding file and line.
        engine: ``qrexec`` or ``nexusd``: whose evaluation decided.
        by_nexusd: whether the deciding rule is one of nexusd's own.
        shadowed: nexusd's rules that match the call but come too late,
            each ``{"file", "line", "rule"}``.
        rule: the deciding rule as written, if a rule decided.
    """

    request: PolicyRequest
    decision: Decision
    engine: str
    by_nexusd: bool
    shadowed: tuple[dict[str, Any], ...] = ()
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "source": self.request.source,
            "target": self.request.target,
            "service": self.request.service_and_arg,
            "decision": self.decision.as_dict(),
            "rule": self.rule,
            "engine": self.engine,
            "by_nexusd": self.by_nexusd,
            "shadowed": list(self.shadowed),
        }


@dataclass(frozen=True)
class Problem:
    """One policy problem that affects nexus services.

    Attributes:
        kind: ``syntax_error``, ``blocked``, ``shadowed``, ``missing`` or
            ``open_connect``.
        severity: ``error`` (calls fail) or ``warning``.
        message: what is wrong, for people.
        file: the file at fault, if one is.
        line: its line, if known.
        link: for link problems, ``{"source", "target", "argument"}``.
    """

    kind: str
    severity: str
    message: str
    file: str | None = None
    line: int | None = None
    link: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "link": dict(self.link) or None,
        }


def _load(config: Config) -> PolicySet:
    paths = config.paths
    return load_policy_set(
        paths.runtime_policy_dir, paths.policy_dir, paths.legacy_policy_dir
    )


def _same_file(a: Path | str | None, b: Path) -> bool:
    if a is None:
        return False
    return Path(a).resolve() == b.resolve()


def choose_engine(config: Config, engine: str = "auto") -> str:
    """The engine to use: qrexec's only in dom0 and when it imports.

    Raises:
        ValueError: *engine* is not one of ``ENGINES``.
    """
    if engine not in ENGINES:
        msg = f"engine must be one of {ENGINES}, got {engine!r}"
        raise ValueError(msg)
    if engine != "auto":
        return engine
    if config.sim_root is not None:
        return "nexusd"
    try:
        import qrexec.policy.parser  # noqa: F401 - probing only
    except ImportError:
        return "nexusd"
    return "qrexec"


def explain(
    config: Config,
    system: Mapping[str, Any],
    request: PolicyRequest,
    *,
    engine: str = "auto",
) -> Explanation:
    """Explain how *request* is decided on a system described by *system*
    (qubesd's ``GetSystemInfo`` form)."""
    engine = choose_engine(config, engine)
    policy = _load(config)
    info = SystemInfo.from_dict(system)
    if engine == "qrexec":
        decision = qrexec_decide(config, system, request)
    else:
        decision = policy.evaluate(request.as_request(), info)
    ours = config.links_policy_file
    by_nexusd = _same_file(decision.file, ours)
    shadowed = [
        {
            "file": str(rule.filepath),
            "line": rule.lineno,
            "rule": render_rule(rule),
        }
        for rule in policy.matching_rules(request.as_request(), info)
        if _same_file(rule.filepath, ours)
        and not (by_nexusd and rule.lineno == decision.line)
    ]
    text = None
    if decision.file is not None:
        text = next(
            (
                render_rule(rule)
                for rule in policy.rules
                if rule.lineno == decision.line
                and _same_file(rule.filepath, Path(decision.file))
            ),
            None,
        )
    return Explanation(
        request, decision, engine, by_nexusd, tuple(shadowed), text
    )


def _syntax_problems(errors: Iterable[str]) -> list[Problem]:
    problems = []
    for error in errors:
        match = _ERROR_RE.match(error)
        file = line = None
        reason = error
        if match is not None:
            file, line = match["file"], int(match["line"]) or None
            reason = match["reason"]
        problems.append(
            Problem(
                "syntax_error",
                "error",
                f"{reason}; qrexec denies every call until it is fixed",
                file,
                line,
            )
        )
    return problems


def _where(decision: Decision) -> str:
    if decision.file is None:
        return decision.reason
    return f"{decision.file}:{decision.line}"


def _link_problem(
    line: LinkLine, decision: Decision, ours: Path
) -> Problem | None:
    if _same_file(decision.file, ours) and decision.allowed:
        return None
    link = {
        "source": line.source,
        "target": line.target,
        "argument": line.argument,
    }
    what = f"link {line.source} -> {line.target} {CONNECT}{line.argument}"
    file = str(decision.file) if decision.file is not None else None
    if not decision.allowed:
        message = f"{what} is blocked: {decision.action} by {_where(decision)}"
        return Problem("blocked", "error", message, file, decision.line, link)
    message = (
        f"{what}: nexusd's rule is shadowed by {_where(decision)}, which"
        " allows it"
    )
    return Problem("shadowed", "warning", message, file, decision.line, link)


def check(
    config: Config,
    system: Mapping[str, Any],
    links: Iterable[LinkLine] = (),
    *,
    engine: str = "auto",
) -> list[Problem]:
    """Every policy problem that affects nexus services.

    Args:
        config: where the policy folders and nexusd's file are.
        system: qubesd's ``GetSystemInfo`` form of the qubes.
        links: the links in nexusd's database (each should have a line).
        engine: as for :func:`explain`.
    """
    engine = choose_engine(config, engine)
    policy = _load(config)
    problems = _syntax_problems(policy.errors)
    info = SystemInfo.from_dict(system)
    ours = config.links_policy_file
    written = {
        (r.argument, r.source, r.target)
        for r in policy.rules
        if _same_file(r.filepath, ours) and r.service == CONNECT
    }
    for line in sorted(set(links)):
        if (line.argument, line.source, line.target) not in written:
            problems.append(
                Problem(
                    "missing",
                    "error",
                    f"link {line.source} -> {line.target}"
                    f" {CONNECT}{line.argument} has no line in {ours}",
                    str(ours),
                    None,
                    {
                        "source": line.source,
                        "target": line.target,
                        "argument": line.argument,
                    },
                )
            )
            continue
        request = PolicyRequest(
            line.source, line.target, CONNECT, line.argument
        )
        if engine == "qrexec":
            decision = qrexec_decide(config, system, request)
        else:
            decision = policy.evaluate(request.as_request(), info)
        problem = _link_problem(line, decision, ours)
        if problem is not None:
            problems.append(problem)
    problems.extend(_open_connect(policy.rules, ours))
    return problems


def _open_connect(rules: Iterable[Rule], ours: Path) -> list[Problem]:
    found = []
    for rule in rules:
        if (
            rule.service == CONNECT
            and rule.action != "deny"
            and not _same_file(rule.filepath, ours)
        ):
            found.append(
                Problem(
                    "open_connect",
                    "warning",
                    f"{render_rule(rule)!r} lets {CONNECT} through without"
                    " a link nexusd made",
                    str(rule.filepath) if rule.filepath else None,
                    rule.lineno,
                )
            )
    return found


def _qrexec_system(system: Mapping[str, Any]) -> dict[str, Any]:
    """*system* as ``qrexec.utils.get_system_info`` returns it: each qube
    also under ``uuid:UUID``, each with its ``name``."""
    domains: dict[str, Any] = {}
    for name, info in dict(system.get("domains", {})).items():
        entry = {**info, "name": name}
        domains[name] = entry
        if entry.get("uuid"):
            domains[f"uuid:{entry['uuid']}"] = entry
    return {"domains": domains}


def qrexec_decide(
    config: Config, system: Mapping[str, Any], request: PolicyRequest
) -> Decision:
    """Decide *request* with qrexec's own parser (dom0 only).

    The policy is read from the configured folders; ``!compat-4.0`` reads
    qrexec's own legacy folder, as qrexec-policy-daemon does. Any failure is
    a denial, as in qrexec.

    Raises:
        ImportError: the ``qrexec`` package is not installed.
    """
    from qrexec.exc import AccessDenied
    from qrexec.policy import parser

    paths = config.paths
    folders = [
        p for p in (paths.runtime_policy_dir, paths.policy_dir) if p.is_dir()
    ]
    try:
        policy = parser.FilePolicy(policy_path=folders)
        qrequest = parser.Request(
            request.service,
            request.argument,
            request.source,
            request.target,
            system_info=_qrexec_system(system),
        )
        rule = policy.find_matching_rule(qrequest)
    except AccessDenied as err:
        return Decision("deny", reason=str(err))
    except Exception as err:  # noqa: BLE001 - qrexec denies on any fault
        log.warning("qrexec_evaluation_failed", error=type(err).__name__)
        return Decision("deny", reason=f"qrexec failed: {type(err).__name__}")
    where = {"file": Path(rule.filepath), "line": rule.lineno}
    try:
        resolution = rule.action.evaluate(qrequest)
    except AccessDenied as err:
        return Decision("deny", notify=err.notify, reason=str(err), **where)
    except Exception as err:  # noqa: BLE001 - qrexec denies on any fault
        log.warning("qrexec_evaluation_failed", error=type(err).__name__)
        return Decision("deny", reason=f"qrexec failed: {type(err).__name__}")
    if isinstance(resolution, parser.AllowResolution):
        return Decision(
            "allow",
            target=resolution.target,
            autostart=resolution.autostart,
            notify=resolution.notify,
            user=resolution.user,
            reason=f"allowed by policy {rule.filepath}:{rule.lineno}",
            **where,
        )
    return Decision(
        "ask",
        target=resolution.default_target,
        targets_for_ask=tuple(sorted(resolution.targets_for_ask)),
        autostart=resolution.autostart,
        notify=resolution.notify,
        user=resolution.user,
        reason=f"ask by policy {rule.filepath}:{rule.lineno}",
        **where,
    )
