# SPDX-License-Identifier: MIT
"""Fuzz targets: every parser that reads guest or qubesd bytes, each with a
Hypothesis strategy and the property it must keep.

A target's ``check`` takes one input and raises ``AssertionError`` when the
parser breaks its contract: it may only return a value that satisfies its
grammar, or raise the one error type it documents. Where an independent
statement of the grammar exists (qubesd's name rules, qrexec's policy
columns) the parser is compared with it. The CI tests run each target with
few examples; ``python -m reliability fuzz`` runs them with many.
"""

from __future__ import annotations

import logging
import re
import string
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from nexusd.errors import BadArgument, BadPayload, NexusError
from nexusd.guests import QUOTA_MAX, parse_quota
from nexusd.linkpolicy import SERVICE as CONNECT
from nexusd.linkpolicy import LinkLine, render_links_policy
from nexusd.names import (
    is_qube_name,
    parse_container_name,
    parse_link_target,
    parse_port,
)
from nexusd.policy import PolicySyntaxError, parse_rule_line, render_rule
from nexusd.qubes.errors import QubesError
from nexusd.qubes.wire import parse_event, parse_reply, parse_vm_list
from nexusd.rpc.header import ARG_MAX, parse_header
from nexusd.services.links import _parse_from
from nexusd.services.spec import (
    MAX_PORTS,
    MESSAGE_MAX,
    STATES,
    ContainerSpec,
    parse_container_spec,
    parse_state_report,
)
from reliability.strategies import (
    headers,
    payloads,
    qubesd_bytes,
    rule_lines,
    texts,
)

__all__ = ["SERVICES", "SOCKET", "TARGETS", "FuzzReport", "Target", "run_fuzz"]

#: The name of the target that fuzzes a running nexusd (long run only).
SOCKET = "socket"
SERVICES = frozenset(
    {
        "nexus.ContainerCreate",
        "nexus.ContainerRemove",
        "nexus.ContainerList",
        "nexus.ContainerReport",
        "nexus.LinkRequest",
        "nexus.LinkRemove",
    }
)


@dataclass(frozen=True)
class Target:
    """One parser under fuzzing."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    what: str


# -- reference grammars, written from QUBES-PROTOCOLS.md, not from nexusd --

_QUBE_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")


def reference_qube_name(text: str) -> bool:
    """qubesd's validate_name: 1..31 of [A-Za-z0-9_.-], a letter first,
    not Domain-0/none/default, not ending in -dm."""
    return (
        1 <= len(text) <= 31
        and all(c in _QUBE_CHARS for c in text)
        and text[0] in string.ascii_letters
        and text not in {"Domain-0", "none", "default"}
        and not text.endswith("-dm")
    )


def reference_container_name(text: str) -> bool:
    """1..11 of [a-z0-9-], a letter first, no hyphen last."""
    return (
        1 <= len(text) <= 11
        and all(c in string.ascii_lowercase + string.digits + "-" for c in text)
        and text[0] in string.ascii_lowercase
        and not text.endswith("-")
    )


def reference_port(value: object) -> int | None:
    """A TCP port from an int (not a bool) or canonical decimal text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (
            1 <= len(value) <= 5
            and all(c in string.digits for c in value)
            and value[0] != "0"
        ):
            return None
        value = int(value)
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


def reference_quota(text: str) -> int | None:
    """The quota feature: decimal digits up to QUOTA_MAX, else unset."""
    if not 1 <= len(text) <= 4 or not all(c in string.digits for c in text):
        return None
    value = int(text)
    return value if value <= QUOTA_MAX else None


# -- checks ------------------------------------------------------------------

_ARG_RE = re.compile(r"\A[A-Za-z0-9_.-]*\Z")
_KEYWORD_RE = re.compile(r"\A@[a-z]{1,16}\Z")
_UUID_RE = re.compile(r"\Auuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\Z")


def check_header(raw: bytes) -> None:
    """parse_header returns a header of valid fields or a NexusError."""
    try:
        header = parse_header(untrusted_header=raw, services=SERVICES)
    except NexusError:
        return
    assert header.service in SERVICES
    assert len(header.argument) <= ARG_MAX
    assert _ARG_RE.match(header.argument)
    assert reference_qube_name(header.source)
    target = header.target
    assert (
        _KEYWORD_RE.match(target)
        or _UUID_RE.match(target)
        or reference_qube_name(target)
    ), target
    want = f"{header.service}+{header.argument} {header.source} "
    assert raw.decode("ascii").startswith(want)


def check_payload(raw: bytes) -> None:
    """The three payload parsers accept only their grammar and refuse
    everything else with BadPayload or BadArgument."""
    try:
        spec = parse_container_spec(untrusted_payload=raw)
    except BadPayload:
        pass
    else:
        assert len(spec.ports) <= MAX_PORTS
        assert list(spec.ports) == sorted(set(spec.ports))
        assert all(reference_port(p) == p for p in spec.ports)
        again = parse_container_spec(
            untrusted_payload=spec.canonical().encode()
        )
        assert again == spec
        assert ContainerSpec.from_canonical(spec.canonical()) == spec
    try:
        report = parse_state_report(untrusted_payload=raw)
    except BadPayload:
        pass
    else:
        assert report.state in STATES
        assert len(report.message) <= MESSAGE_MAX
        assert all(" " <= c <= "~" for c in report.message)
    try:
        name = _parse_from(untrusted_payload=raw)
    except (BadPayload, BadArgument):
        pass
    else:
        assert reference_container_name(name)


def check_names(text: str) -> None:
    """Each name grammar agrees with its reference statement."""
    assert is_qube_name(text) == reference_qube_name(text), text
    try:
        parse_container_name(untrusted_name=text)
    except BadArgument:
        assert not reference_container_name(text)
    else:
        assert reference_container_name(text)
    try:
        port = parse_port(untrusted_port=text)
    except BadArgument:
        assert reference_port(text) is None
    else:
        assert reference_port(text) == port
    container, dot, port_text = text.partition(".")
    try:
        target = parse_link_target(untrusted_arg=text)
    except BadArgument:
        assert not (
            dot
            and reference_container_name(container)
            and reference_port(port_text) is not None
        )
    else:
        assert str(target) == text
    assert parse_quota(untrusted_value=text) == reference_quota(text)


def check_link_line(parts: tuple[str, object, str, str]) -> None:
    """A links-file line renders only from valid names, and then parses to
    exactly the one allow rule it stands for."""
    container, port, source, target = parts
    line = LinkLine(container, port, source, target)  # type: ignore[arg-type]
    try:
        text = line.render()
    except BadArgument:
        assert not (
            reference_container_name(container)
            and reference_port(port) is not None
            and reference_qube_name(source)
            and reference_qube_name(target)
        )
        return
    assert "\n" not in text
    rule = parse_rule_line(text, "45-nexus-links.policy", 1)
    assert (rule.service, rule.argument) == (CONNECT, f"+{container}.{port}")
    assert (rule.source, rule.target) == (source, target)
    assert (rule.action, rule.params) == ("allow", ())
    body = render_links_policy([line, line]).splitlines()
    assert [w for w in body if not w.startswith("#")] == [text]


def check_rule_line(text: str) -> None:
    """A policy line parses to a rule or raises PolicySyntaxError; a rule
    renders to one line that parses back equal."""
    try:
        rule = parse_rule_line(text, "fuzz.policy", 1)
    except PolicySyntaxError:
        return
    rendered = render_rule(rule)
    assert "\n" not in rendered
    assert parse_rule_line(rendered, "fuzz.policy", 1) == rule


def check_qubesd(parts: tuple[bytes, list[bytes]]) -> None:
    """qubesd's replies, lists and events parse or raise a QubesError."""
    raw, fields = parts
    for parse in (
        lambda: parse_reply(untrusted_reply=raw),
        lambda: parse_vm_list(untrusted_text=raw),
        lambda: parse_event(untrusted_fields=fields),
    ):
        try:
            parse()
        except QubesError:
            pass


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "header_bytes",
            st.binary(max_size=300),
            check_header,
            "qrexec service descriptor, random bytes",
        ),
        Target(
            "header_mutated",
            headers(),
            check_header,
            "qrexec service descriptor, built then mutated",
        ),
        Target(
            "payloads",
            payloads,
            check_payload,
            "ContainerCreate, ContainerReport and Link* payloads",
        ),
        Target(
            "names",
            texts | st.binary(max_size=16).map(lambda b: b.decode("latin-1")),
            check_names,
            "qube, container, port, link-target and quota grammars",
        ),
        Target(
            "link_lines",
            st.tuples(
                texts,
                st.integers(-2, 70000) | texts | st.booleans(),
                texts,
                texts,
            ),
            check_link_line,
            "nexus.Connect lines of the links policy file",
        ),
        Target(
            "policy_lines",
            rule_lines(),
            check_rule_line,
            "qrexec policy rule grammar (parse, render, parse)",
        ),
        Target(
            "qubesd_replies",
            qubesd_bytes(),
            check_qubesd,
            "qubesd replies, admin.vm.List and admin.Events fields",
        ),
    )
}


def _counted(
    check: Callable[[Any], None], calls: list[int]
) -> Callable[[Any], None]:
    """*check*, counting its inputs in ``calls[0]``."""

    def counted(value: Any) -> None:
        calls[0] += 1
        check(value)

    return counted


@dataclass
class FuzzReport:
    """Inputs tried per target, and what failed."""

    tried: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    what: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as text lines."""
        out = [
            f"fuzz: {sum(self.tried.values())} inputs over"
            f" {len(self.tried)} targets"
        ]
        for name, count in self.tried.items():
            verdict = "FAILED" if name in self.failures else "ok"
            out.append(
                f"  {name}: {count} inputs in {self.seconds[name]:.1f} s,"
                f" {verdict} ({self.what.get(name, '')})"
            )
        for name, text in self.failures.items():
            out.append(f"failure in {name}:")
            out += [f"    {line}" for line in text.splitlines()]
        out.append(f"failures: {len(self.failures)}")
        return out


def run_fuzz(
    examples: int, *, seed_value: int = 0, only: list[str] | None = None
) -> FuzzReport:
    """Run the targets with *examples* inputs in all, shared out evenly.

    Hypothesis stops a target early when it has tried every input its
    strategy can make, so the counts may come out lower.
    """
    report = FuzzReport()
    names = only or [*TARGETS, SOCKET]
    unknown = set(names) - set(TARGETS) - {SOCKET}
    if unknown:
        msg = f"no such targets: {', '.join(sorted(unknown))}"
        raise ValueError(msg)
    per_target = max(1, examples // len(names))
    # Refusals log a warning each; a fuzz run would print one per input.
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )
    try:
        for name in names:
            if name == SOCKET:
                _run_socket(per_target, seed_value, report)
            else:
                _run_target(TARGETS[name], per_target, seed_value, report)
    finally:
        structlog.configure(**saved)
    return report


def _run_socket(examples: int, seed_value: int, report: FuzzReport) -> None:
    """Whole calls against a nexusd process in a temporary dom0."""
    from reliability.dom0 import Dom0
    from reliability.fuzz_socket import SocketFuzz, calls

    with tempfile.TemporaryDirectory(prefix="nexus-fuzz-") as tmp:
        dom0 = Dom0(Path(tmp) / "dom0").create()
        try:
            dom0.start_qubesd()
            dom0.start_nexusd()
            dom0.wait_serving()
            fuzz = SocketFuzz(dom0)
            target = Target(
                SOCKET,
                calls(),
                fuzz.check,
                "whole calls to a running nexusd: one JSON reply each,"
                " refusals change nothing",
            )
            _run_target(target, examples, seed_value, report)
        finally:
            dom0.close()


def _run_target(
    target: Target, examples: int, seed_value: int, report: FuzzReport
) -> None:
    name = target.name
    calls = [0]
    run = seed(seed_value)(
        settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(target.strategy)(_counted(target.check, calls)))
    )
    started = time.monotonic()
    try:
        run()
    except Exception as err:  # noqa: BLE001 - reported, not raised
        notes = "\n".join(getattr(err, "__notes__", []))
        report.failures[name] = f"{type(err).__name__}: {err}\n{notes}"
    report.seconds[name] = time.monotonic() - started
    report.tried[name] = calls[0]
    report.what[name] = target.what
