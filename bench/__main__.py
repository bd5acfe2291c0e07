# SPDX-License-Identifier: MIT
"""``python -m bench``: run the suite, print the tables, write the JSON.

``--quick`` runs the same machinery with toy sizes in seconds (the smoke
test uses it); the figures it prints mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from bench.calls import CallSettings, run_calls
from bench.machine import describe_machine
from bench.policycost import PolicySettings, run_policy
from bench.report import check_targets, render
from bench.scale import ScaleSettings, run_scale
from bench.seed import Population

__all__ = ["Settings", "main", "run"]

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("calls", "scale", "policy")


class Settings:
    """Everything one run measures, full size or toy."""

    def __init__(self, *, quick: bool = False) -> None:
        """Issue 9's sizes, or toy ones with *quick*."""
        if quick:
            self.calls = CallSettings(
                levels=(1, 4), duration_s=0.2, warmup_s=0.05, rounds=1
            )
            self.calls.paced_rate = 200.0
            self.scale = ScaleSettings(
                populations=(Population(4, 4, 4), Population(8, 40, 40)),
                repeats=1,
                read_guests=2,
                read_s=0.1,
            )
            self.policy = PolicySettings(sizes=(10, 50), repeats=1)
        else:
            self.calls = CallSettings()
            self.scale = ScaleSettings()
            self.policy = PolicySettings()


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def run(
    settings: Settings,
    workdir: Path,
    sections: tuple[str, ...] = SECTIONS,
) -> dict[str, Any]:
    """Run *sections* in *workdir*; return the whole result."""
    began = time.perf_counter()
    result: dict[str, Any] = {
        "machine": describe_machine(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "load_before": _load_average(),
        "settings": {
            "call_levels": list(settings.calls.levels),
            "call_seconds_per_server": settings.calls.duration_s,
            "paced_rate": settings.calls.paced_rate,
            "scale_points": [p.label for p in settings.scale.populations],
            "policy_sizes": list(settings.policy.sizes),
            "admin_api_port": "bench.port.BenchPort (in memory)",
        },
    }
    if "calls" in sections:
        result["calls"] = run_calls(workdir, settings.calls)
    if "scale" in sections:
        result["scale"] = run_scale(workdir, settings.scale)
    if "policy" in sections:
        result["policy"] = run_policy(settings.policy)
    result["targets"] = check_targets(result)
    result["load_after"] = _load_average()
    result["duration_s"] = time.perf_counter() - began
    return result


def _quiet_logging(path: Path) -> None:
    # nexusd's parts that run in this process log as nexusd does, into a
    # file of the run instead of the terminal.
    from nexusd.logs import configure_logging

    configure_logging(level="info", journal=False)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(
            file=path.open("a", encoding="utf-8")
        ),
        cache_logger_on_first_use=False,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="toy sizes (a smoke run)"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for latest.json and latest.md (default: bench/results)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR and keep it (logs, databases) instead of a"
        " temporary folder",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the tables; write the JSON and Markdown."""
    args = _parser().parse_args(argv)
    settings = Settings(quick=args.quick)
    sections = tuple(args.only or SECTIONS)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        _quiet_logging(workdir / "in-process.log")
        result = run(settings, workdir, sections)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(
        json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (args.out / "latest.md").write_text(
        render(result, markdown=True), encoding="utf-8"
    )
    print(render(result))
    print(f"written: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
