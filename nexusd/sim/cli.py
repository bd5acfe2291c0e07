# SPDX-License-Identifier: MIT
"""``nexus-sim``: build, serve and use a simulated dom0 folder.

``init`` lays out a machine, ``qubesd`` serves its Admin API socket until
SIGTERM/SIGINT, ``query`` makes one Admin API call as ``qubesd-query``
does, ``call`` makes a qrexec call as ``qrexec-client-vm`` does (same exit
statuses), ``policy`` explains how policy decides a call, and ``settings``
changes the simulator's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import cast

import structlog

from nexusd.sim.client import qubesd_call
from nexusd.sim.layout import SimLayout
from nexusd.sim.machine import init_machine
from nexusd.sim.model import Dom0Model
from nexusd.sim.qubesd import MAX_REQUEST, QubesdServer
from nexusd.sim.router import policy_decision, policy_permits, route_call
from nexusd.sim.settings import ASK_ANSWERS, Settings

__all__ = ["build_parser", "main"]

#: Bytes read from stdin at a time.
STDIN_CHUNK = 65536


def build_parser() -> argparse.ArgumentParser:
    """The ``nexus-sim`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nexus-sim", description="A simulated Qubes dom0 for nexusd."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a simulated dom0 in DIR")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--ask",
        choices=ASK_ANSWERS,
        default="deny",
        help="how policy 'ask' is answered (default: deny)",
    )

    qubesd = sub.add_parser("qubesd", help="serve DIR's qubesd socket")
    qubesd.add_argument("dir", type=Path)

    query = sub.add_parser("query", help="one Admin API call, payload on stdin")
    query.add_argument("dir", type=Path)
    query.add_argument("--source", default="dom0")
    query.add_argument("method")
    query.add_argument("dest")
    query.add_argument("arg", nargs="?", default="")

    call = sub.add_parser("call", help="one qrexec call from a qube")
    call.add_argument("dir", type=Path)
    call.add_argument("--from", dest="source", required=True)
    call.add_argument("--target", default="@default")
    call.add_argument("service")

    policy = sub.add_parser("policy", help="how policy decides a call")
    policy.add_argument("dir", type=Path)
    policy.add_argument("source")
    policy.add_argument("target")
    policy.add_argument("service")

    settings = sub.add_parser("settings", help="change simulator settings")
    settings.add_argument("dir", type=Path)
    settings.add_argument("--ask", choices=ASK_ANSWERS)
    return parser


def _need_machine(root: Path) -> SimLayout:
    layout = SimLayout(root)
    if not layout.state_file.is_file():
        msg = f"{root} holds no simulated dom0 (run nexus-sim init)"
        raise SystemExit(f"nexus-sim: {msg}")
    return layout


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        model = init_machine(args.dir, ask=args.ask)
    except FileExistsError as exc:
        sys.stderr.write(f"nexus-sim: {exc}\n")
        return 1
    names = ", ".join(q.name for q in model.qubes())
    sys.stdout.write(f"simulated dom0 in {args.dir}: {names}\n")
    return 0


async def _serve(layout: SimLayout) -> None:
    model = Dom0Model.load(layout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    permit = policy_permits(layout, model.system_info)
    async with QubesdServer(model, layout.qubesd_socket, permit=permit):
        await stop.wait()


def _cmd_qubesd(args: argparse.Namespace) -> int:
    layout = _need_machine(args.dir)
    try:
        asyncio.run(_serve(layout))
    except FileExistsError as exc:
        sys.stderr.write(f"nexus-sim: {exc}\n")
        return 1
    return 0


def _read_stdin_bounded(limit: int) -> bytes:
    """At most *limit* + 1 bytes of stdin (qubesd refuses more anyway)."""
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return bytes(sys.stdin.buffer.read(limit + 1))


def _cmd_query(args: argparse.Namespace) -> int:
    layout = _need_machine(args.dir)
    payload = _read_stdin_bounded(MAX_REQUEST)
    try:
        reply = asyncio.run(
            qubesd_call(
                layout.qubesd_socket,
                args.method,
                args.dest,
                args.arg,
                payload,
                source=args.source,
            )
        )
    except OSError as exc:
        sys.stderr.write(f"nexus-sim: qubesd not reachable: {exc}\n")
        return 1
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return 0 if reply.startswith(b"0\x00") else 1


def _stdin_reader(loop: asyncio.AbstractEventLoop) -> asyncio.StreamReader:
    """stdin as a StreamReader, fed by a thread (works for files too)."""
    reader = asyncio.StreamReader(limit=STDIN_CHUNK)
    # Raw reads of fd 0: a daemon thread blocked in the buffered reader holds
    # its lock, and the interpreter aborts when it finalizes stdin at exit.
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        fd = -1

    def read() -> bytes:
        if fd >= 0:
            return os.read(fd, STDIN_CHUNK)
        buffered = cast(io.BufferedReader, sys.stdin.buffer)
        return bytes(buffered.read1(STDIN_CHUNK))

    def pump() -> None:
        while True:
            try:
                chunk = read()
            except (OSError, ValueError):
                chunk = b""
            try:
                if not chunk:
                    loop.call_soon_threadsafe(reader.feed_eof)
                    return
                loop.call_soon_threadsafe(reader.feed_data, chunk)
            except RuntimeError:  # the loop has finished: nobody reads
                return

    threading.Thread(target=pump, daemon=True).start()
    return reader


async def _call(args: argparse.Namespace, layout: SimLayout) -> int:
    stdin = _stdin_reader(asyncio.get_running_loop())
    return await route_call(
        layout,
        args.source,
        args.target,
        args.service,
        stdin,
        sys.stdout.buffer,
    )


def _cmd_call(args: argparse.Namespace) -> int:
    layout = _need_machine(args.dir)
    return asyncio.run(_call(args, layout))


def _cmd_policy(args: argparse.Namespace) -> int:
    layout = _need_machine(args.dir)
    decision = policy_decision(layout, args.source, args.target, args.service)
    sys.stdout.write(json.dumps(decision) + "\n")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    layout = _need_machine(args.dir)
    settings = Settings.load(layout)
    if args.ask is not None:
        settings = Settings(ask=args.ask)
        settings.save(layout)
    sys.stdout.write(json.dumps({"ask": settings.ask}) + "\n")
    return 0


_COMMANDS = {
    "init": _cmd_init,
    "qubesd": _cmd_qubesd,
    "query": _cmd_query,
    "call": _cmd_call,
    "policy": _cmd_policy,
    "settings": _cmd_settings,
}


def _configure_logging(command: str) -> None:
    """Logs go to stderr, never into a command's output on stdout.

    ``qubesd`` logs each request; the one-shot commands only warnings, so
    ``call`` leaves stderr as quiet as ``qrexec-client-vm`` does.
    """
    level = logging.INFO if command == "qubesd" else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``nexus-sim`` with *argv*; return the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.command)
    with contextlib.suppress(BrokenPipeError):
        return _COMMANDS[args.command](args)
    return 1
