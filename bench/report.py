# SPDX-License-Identifier: MIT
"""The run's tables (text for the terminal, Markdown for the docs) and the
check of issue 9's targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.stats import growth

__all__ = ["GROWTH_SLACK", "check_targets", "render"]

#: A growth exponent up to this counts as linear: timing noise between two
#: points moves it by a few hundredths.
GROWTH_SLACK = 1.1
_MIB = 1024


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def _target(
    name: str,
    measured: float | None,
    limit: float,
    *,
    at_most: bool = True,
    unit: str = "",
    note: str = "",
) -> dict[str, Any]:
    met = (
        measured is not None
        and not math.isnan(measured)
        and (measured <= limit if at_most else measured >= limit)
    )
    return {
        "target": name,
        "measured": measured,
        "limit": limit,
        "rule": "at most" if at_most else "at least",
        "unit": unit,
        "met": met,
        "note": note,
    }


def _call_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    closed = [r for r in rows if r["mode"] == "closed"]
    top = max((r["concurrency"] for r in closed), default=0)
    for row in closed:
        if row["operation"] == "read":
            found.append(
                _target(
                    f"read p50 / baseline p50, {row['concurrency']} callers",
                    row["ratio"]["p50"],
                    1.5,
                    unit="x",
                )
            )
        if row["concurrency"] == top and row["operation"] == "read":
            found.append(
                _target(
                    f"read p99, {top} callers at once",
                    row["nexusd"]["p99_ms"],
                    5.0,
                    unit="ms",
                    note=f"baseline p99 {_fmt(row['baseline']['p99_ms'])} ms",
                )
            )
        if row["concurrency"] == top and row["operation"] == "write":
            found.append(
                _target(
                    f"write calls/s / baseline calls/s, {top} callers",
                    row["ratio"]["calls_per_s"],
                    0.5,
                    at_most=False,
                    unit="x",
                )
            )
    for row in rows:
        if row["mode"] == "paced" and row["operation"] == "read":
            found.append(
                _target(
                    f"read p99, {row['concurrency']} guests paced at"
                    f" {_fmt(row['rate'])} calls/s",
                    row["nexusd"]["p99_ms"],
                    5.0,
                    unit="ms",
                    note=f"baseline p99 {_fmt(row['baseline']['p99_ms'])} ms",
                )
            )
    return found


_GROWING = (
    ("ready_s", "start to READY=1"),
    ("hwm_kib", "resident memory (VmHWM)"),
    ("regeneration_s", "policy regeneration"),
    ("reconcile_s", "reconcile after reconnect"),
    ("shadow_report_s", "shadow report after a policy change"),
)


def _scale_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    top = rows[-1]
    label = f"at {top['links']} links"
    found = [
        _target(f"start to READY=1 {label}", top["ready_s"], 1.0, unit="s"),
        _target(
            f"resident memory (VmHWM) {label}",
            top["hwm_kib"] / _MIB,
            60.0,
            unit="MiB",
        ),
        _target(
            f"policy regeneration {label}",
            top["regeneration_s"] * 1000,
            100.0,
            unit="ms",
        ),
    ]
    sizes = [r["links"] for r in rows]
    for key, words in _GROWING:
        exponents = [
            e for e in growth(sizes, [r[key] for r in rows]) if e is not None
        ]
        found.append(
            _target(
                f"growth of {words} (exponent, 1 = linear)",
                max(exponents) if exponents else None,
                GROWTH_SLACK,
                note="from point to point: "
                + ", ".join(_fmt(e, 2) for e in exponents),
            )
        )
    return found


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets against the figures of *result*."""
    found = []
    if result.get("calls"):
        found += _call_targets(result["calls"]["rows"])
    if result.get("scale"):
        found += _scale_targets(result["scale"])
    return found


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(str(cell)) for cell in column)
        for column in zip(header, *rows, strict=True)
    ]
    # Words left, figures right: a column is figures if its first row
    # starts with a digit.
    words = [
        not (rows and rows[0][i][:1].isdigit()) for i in range(len(widths))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = (
            c.ljust(w) if left else c.rjust(w)
            for c, w, left in zip(row, widths, words, strict=True)
        )
        lines.append("  ".join(cells).rstrip())
    return lines


def _markdown(
    header: Sequence[str], rows: Sequence[Sequence[str]]
) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _call_rows(calls: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "operation",
        "callers",
        "base p50 ms",
        "nexusd p50 ms",
        "p50 x",
        "base p99 ms",
        "nexusd p99 ms",
        "p99 x",
        "base calls/s",
        "nexusd calls/s",
        "calls/s x",
        "cpu/call x",
        "errors",
    ]
    rows = []
    for row in calls["rows"]:
        base, ours, ratio = row["baseline"], row["nexusd"], row["ratio"]
        callers = str(row["concurrency"])
        if row["mode"] == "paced":
            callers += f" @{_fmt(row['rate'])}/s"
        errors = sum(ours["errors"].values()) + sum(base["errors"].values())
        rows.append(
            [
                row["operation"],
                callers,
                _fmt(base["p50_ms"]),
                _fmt(ours["p50_ms"]),
                _fmt(ratio["p50"], 2),
                _fmt(base["p99_ms"]),
                _fmt(ours["p99_ms"]),
                _fmt(ratio["p99"], 2),
                _fmt(base["calls_per_s"]),
                _fmt(ours["calls_per_s"]),
                _fmt(ratio["calls_per_s"], 2),
                _fmt(ratio["server_cpu_per_call"], 2),
                str(errors),
            ]
        )
    return header, rows


def _scale_rows(
    scale: list[dict[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    header = [
        "qubes/containers/links",
        "READY s",
        "1st call s",
        "RSS MiB",
        "HWM MiB",
        "regen ms",
        "reconcile ms",
        "via sim qubesd ms",
        "shadow ms",
        "read p50 ms",
    ]
    rows = [
        [
            row["label"],
            _fmt(row["ready_s"]),
            _fmt(row["first_call_s"]),
            _fmt(row["rss_after_reads_kib"] / _MIB),
            _fmt(row["hwm_kib"] / _MIB),
            _fmt(row["regeneration_s"] * 1000),
            _fmt(row["reconcile_s"] * 1000),
            _fmt(
                row["reconcile_sim_qubesd_s"] * 1000
                if row.get("reconcile_sim_qubesd_s") is not None
                else None
            ),
            _fmt(row["shadow_report_s"] * 1000),
            _fmt(row["read"]["p50_ms"]),
        ]
        for row in scale
    ]
    return header, rows


def _policy_rows(
    policy: list[dict[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    header = [
        "link lines",
        "engine",
        "load ms",
        "first line us",
        "last line us",
        "no line us",
        "agree",
    ]
    rows = []
    for row in policy:
        for engine in ("nexusd", "qrexec"):
            figures = row[engine]
            if figures is None:
                rows.append([str(row["links"]), engine, "not importable"])
                rows[-1] += [""] * (len(header) - 3)
                continue
            rows.append(
                [
                    str(row["links"]),
                    engine,
                    _fmt(figures["load_s"] * 1000),
                    _fmt(figures["first_line_s"] * 1e6),
                    _fmt(figures["last_line_s"] * 1e6),
                    _fmt(figures["no_line_s"] * 1e6),
                    "yes" if row["decisions_agree"] else "NO",
                ]
            )
    return header, rows


def _target_rows(
    targets: list[dict[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    header = ["target", "measured", "limit", "met", "note"]
    rows = [
        [
            t["target"],
            f"{_fmt(t['measured'])} {t['unit']}".strip(),
            f"{t['rule']} {_fmt(t['limit'])} {t['unit']}".strip(),
            "yes" if t["met"] else "NO",
            t["note"],
        ]
        for t in targets
    ]
    return header, rows


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores"
        f" ({machine['cores_usable']} usable),"
        f" {machine['memory_mib']} MiB, Linux {machine['kernel']},"
        f" Python {machine['python']}, SQLite {machine['sqlite']}"
    )


def render(result: dict[str, Any], *, markdown: bool = False) -> str:
    """The whole run as text tables, or Markdown tables for the docs."""
    table = _markdown if markdown else _table
    out = []
    title = "### " if markdown else "== "
    bullet = "- " if markdown else ""
    out.append(f"{bullet}Machine: {_machine_line(result['machine'])}")
    out.append(
        f"{bullet}Run: {result['started_at']}, {_fmt(result['duration_s'])} s,"
        f" load average before {result['load_before']}"
        f" after {result['load_after']}"
    )
    sections = (
        ("calls", "Call overhead: nexusd against the baseline", _call_rows),
        ("scale", "Scale", _scale_rows),
        ("policy", "Policy cost: nexus.Connect", _policy_rows),
    )
    for key, name, rows_of in sections:
        if result.get(key):
            out += ["", title + name, ""]
            out += table(*rows_of(result[key]))
    if result.get("targets"):
        out += ["", title + "Targets (issue 9)", ""]
        out += table(*_target_rows(result["targets"]))
    return "\n".join(out) + "\n"
