# SPDX-License-Identifier: MIT
"""``python -m reliability``: the long runs of the reliability suite.

``fuzz`` runs every parser's properties with many examples, ``crash`` runs
kill cycles against a simulated dom0, ``flood`` holds floods against
nexusd while other guests call. Each prints what it tried and what it
found, and exits 1 if it found a violation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


def _machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    return (
        f"{platform.node()}: {platform.system()} {platform.release()},"
        f" {cpus} CPUs, Python {platform.python_version()}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reliability", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fuzz = sub.add_parser("fuzz", help="every parser, many examples")
    fuzz.add_argument(
        "--examples",
        type=int,
        default=100_000,
        help="examples in all, shared out over the targets (100000)",
    )
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument(
        "--only", action="append", help="run only this target (repeatable)"
    )

    crash = sub.add_parser("crash", help="SIGKILL cycles and invariants")
    crash.add_argument("--cycles", type=int, default=1000)
    crash.add_argument("--seed", type=int, default=0)
    crash.add_argument(
        "--spawn",
        choices=["fork", "exec"],
        default="fork",
        help="start nexusd forked from this process (fast) or as a new"
        " interpreter (as systemd does)",
    )
    crash.add_argument(
        "--keep", type=Path, help="run in this folder and keep it"
    )

    flood = sub.add_parser("flood", help="floods while other guests call")
    flood.add_argument(
        "--seconds", type=float, default=20.0, help="length of each flood"
    )
    flood.add_argument(
        "--keep", type=Path, help="run in this folder and keep it"
    )
    return parser


def _crash(args: argparse.Namespace) -> int:
    from reliability.crash import run_crash_cycles

    with tempfile.TemporaryDirectory(prefix="nexus-crash-") as tmp:
        root = args.keep or Path(tmp) / "dom0"
        print(  # noqa: T201 - the command's output
            f"crash: {args.cycles} cycles, seed {args.seed},"
            f" spawn {args.spawn}, in {root}",
            flush=True,
        )
        report = run_crash_cycles(
            root,
            args.cycles,
            seed=args.seed,
            spawn=args.spawn,
            progress=True,
        )
    for line in report.lines():
        print(line)  # noqa: T201 - the command's output
    return 1 if report.violations else 0


def _fuzz(args: argparse.Namespace) -> int:
    from reliability.fuzz import run_fuzz

    report = run_fuzz(args.examples, seed_value=args.seed, only=args.only)
    for line in report.lines():
        print(line)  # noqa: T201 - the command's output
    return 1 if report.failures else 0


def _flood(args: argparse.Namespace) -> int:
    from reliability.flood import run_floods

    with tempfile.TemporaryDirectory(prefix="nexus-flood-") as tmp:
        root = args.keep or Path(tmp) / "dom0"
        report = run_floods(root, seconds=args.seconds)
    for line in report.lines():
        print(line)  # noqa: T201 - the command's output
    return 1 if report.violations else 0


def main(argv: list[str] | None = None) -> int:
    """Run one long suite; return 1 if it found a violation."""
    args = _parser().parse_args(argv)
    print(f"machine: {_machine()}", flush=True)  # noqa: T201 - output
    started = time.monotonic()
    command = {"crash": _crash, "fuzz": _fuzz, "flood": _flood}[args.command]
    status = command(args)
    print(f"took {time.monotonic() - started:.1f} s")  # noqa: T201 - output
    return status


if __name__ == "__main__":
    sys.exit(main())
