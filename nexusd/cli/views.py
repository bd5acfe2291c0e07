# SPDX-License-Identifier: MIT
"""nexusctl's read and change commands: one function per subcommand, each
printing a table (or JSON with ``--json``) and returning the exit status.

D-Bus records leave out keys whose value is none; the JSON printed here
puts them back as ``null`` so scripts always find the same keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from nexusd.cli.client import NexusClient
from nexusd.cli.output import (
    clean,
    print_json,
    print_pairs,
    print_table,
    when,
)

__all__ = [
    "audit_log",
    "container_remove",
    "containers",
    "job_cancel",
    "jobs",
    "link_remove",
    "links",
    "policy_check",
    "policy_explain",
    "print_result",
    "qubes",
    "status",
]

EXIT_OK = 0
EXIT_FAILED = 1

_STATUS_ROWS = (
    ("version", "version"),
    ("ready", "ready"),
    ("qubes", "qubes"),
    ("guests", "guests"),
    ("containers", "containers"),
    ("links", "links"),
    ("jobs running", "jobs_running"),
    ("policy errors", "policy_errors"),
    ("links policy", "links_policy"),
    ("database", "database"),
    ("socket", "socket"),
)


def _filled(
    items: Iterable[dict[str, Any]], *keys: str
) -> list[dict[str, Any]]:
    return [{**{k: None for k in keys}, **item} for item in items]


def status(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl status``."""
    found = client.status()
    if args.json:
        print_json(found)
        return EXIT_OK
    print_pairs((label, found.get(key)) for label, key in _STATUS_ROWS)
    return EXIT_OK


def qubes(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl qubes``."""
    found = _filled(client.qubes(), "quota")
    if args.json:
        print_json(found)
        return EXIT_OK
    print_table(
        ("NAME", "CLASS", "STATE", "GUEST", "QUOTA", "TAGS"),
        (
            (
                q["name"],
                q["class"],
                "Running" if q["running"] else "Halted",
                q["guest"],
                q["quota"],
                ",".join(q.get("tags", [])) or "-",
            )
            for q in found
        ),
    )
    return EXIT_OK


def _ports(ports: object) -> str:
    if not isinstance(ports, list) or not ports:
        return "-"
    return ",".join(str(p) for p in ports)


def containers(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl containers [QUBE]``."""
    found = client.containers(args.qube)
    if args.json:
        print_json(found)
        return EXIT_OK
    print_table(
        ("QUBE", "NAME", "STATE", "PORTS"),
        (
            (c["qube"], c["name"], c.get("state"), _ports(c.get("ports")))
            for c in found
        ),
    )
    return EXIT_OK


def _end(end: dict[str, Any], port: bool) -> str:
    text = f"{end.get('qube')}/{end.get('container')}"
    return f"{text}.{end.get('port')}" if port else text


def links(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl links``."""
    found = _filled(client.links(), "blocked_by")
    if args.json:
        print_json(found)
        return EXIT_OK
    print_table(
        ("ID", "FROM", "TO", "POLICY"),
        (
            (
                link["id"],
                _end(link["from"], False),
                _end(link["to"], True),
                f"blocked by {link['blocked_by']}"
                if link["blocked_by"]
                else "allowed",
            )
            for link in found
        ),
    )
    return EXIT_OK


def jobs(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl jobs``."""
    found = _filled(client.jobs(), "finished_at", "error_code")
    if args.json:
        print_json(found)
        return EXIT_OK
    print_table(
        ("ID", "KIND", "STATE", "PROGRESS", "ACTOR", "ERROR"),
        (
            (
                j["id"],
                j["kind"],
                j["state"],
                f"{j['fraction'] * 100:.0f} %" if j["fraction"] >= 0 else "?",
                j["actor"],
                j["error_code"],
            )
            for j in found
        ),
    )
    return EXIT_OK


def job_cancel(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl job cancel JOB``."""
    client.cancel_job(args.job)
    if args.json:
        print_json({"cancelled": args.job})
        return EXIT_OK
    sys.stdout.write(f"cancelling {clean(args.job)}\n")
    return EXIT_OK


def print_result(result: dict[str, Any]) -> None:
    """A job's result: its ``text`` lines when it has them (diff, audit),
    else ``key  value`` lines."""
    text = result.get("text")
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        for line in text:
            sys.stdout.write(clean(line) + "\n")
        return
    print_pairs(
        (
            key,
            json.dumps(value, sort_keys=True)
            if isinstance(value, dict | list)
            else value,
        )
        for key, value in sorted(result.items())
    )


def container_remove(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl container remove QUBE NAME``."""
    done = client.remove_container(args.qube, args.name)
    if args.json:
        print_json(done)
        return EXIT_OK
    gone = done.get("links_removed") or []
    suffix = f" and {len(gone)} link(s): {', '.join(gone)}" if gone else ""
    sys.stdout.write(
        f"removed container {clean(done.get('qube'))}/"
        f"{clean(done.get('removed'))}{clean(suffix)}\n"
    )
    return EXIT_OK


def link_remove(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl link remove ID``."""
    done = client.remove_link(args.link_id)
    if args.json:
        print_json(done)
        return EXIT_OK
    sys.stdout.write(f"removed link {clean(done.get('removed'))}\n")
    return EXIT_OK


def policy_explain(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl policy explain SOURCE TARGET SERVICE[+ARG]``."""
    found = client.explain(args.source, args.target, args.service)
    decision = {"file": None, "line": None, "target": None}
    decision.update(found.get("decision", {}))
    result = {
        "rule": None,
        "shadowed": [],
        **found,
        "decision": decision,
    }
    if args.json:
        print_json(result)
        return EXIT_OK
    where = "-"
    if decision["file"] is not None:
        where = f"{decision['file']}:{decision['line']}"
    print_pairs(
        [
            (
                "request",
                f"{result['source']} -> {result['target']} {result['service']}",
            ),
            ("decision", decision.get("action")),
            ("target", decision["target"]),
            ("decided by", where),
            ("rule", result["rule"]),
            ("reason", decision.get("reason")),
            ("nexusd rule", result.get("by_nexusd")),
            ("engine", result.get("engine")),
            ("shadows", len(result["shadowed"]) or "none"),
        ]
    )
    for rule in result["shadowed"]:
        sys.stdout.write(
            f"  {clean(rule.get('file'))}:{clean(rule.get('line'))}"
            f"  {clean(rule.get('rule'))}\n"
        )
    return EXIT_OK


def policy_check(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl policy check``: exit 1 when there is any problem."""
    found = _filled(client.check(), "file", "line", "link")
    if args.json:
        print_json(found)
    elif found:
        print_table(
            ("SEVERITY", "KIND", "WHERE", "PROBLEM"),
            (
                (
                    p["severity"],
                    p["kind"],
                    f"{p['file']}:{p['line'] or 0}" if p["file"] else "-",
                    p["message"],
                )
                for p in found
            ),
        )
    else:
        sys.stdout.write("no problems\n")
    return EXIT_FAILED if found else EXIT_OK


def audit_log(args: argparse.Namespace, client: NexusClient) -> int:
    """``nexusctl log [--qube QUBE] [--limit N]``."""
    found = client.audit_log(args.qube, max(args.limit, 0))
    if args.json:
        print_json(found)
        return EXIT_OK
    print_table(
        ("TIME", "ACTOR", "VIA", "ACTION", "QUBE", "OBJECT"),
        (
            (
                when(r.get("at")),
                r.get("actor"),
                r.get("via"),
                r.get("action"),
                r.get("qube"),
                r.get("object"),
            )
            for r in found
        ),
    )
    return EXIT_OK
