# SPDX-License-Identifier: MIT
"""nexusctl: the administrator's tool, shaped like the ``qvm-*`` tools.

It speaks to nexusd over D-Bus (the system bus, or ``NEXUS_DBUS_ADDRESS``).
Data goes to stdout (a table, or JSON with ``--json``), diagnostics to
stderr. Exit status: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from nexusd import __version__
from nexusd.cli import views
from nexusd.cli.client import ClientError, NexusClient, open_image
from nexusd.cli.completion import bash_completion
from nexusd.cli.output import ProgressBar, clean, print_json
from nexusd.dbus import AUDIT_MAX, bus_address
from nexusd.guests import QUOTA_MAX

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace, NexusClient], int]


def _common() -> argparse.ArgumentParser:
    # --json is accepted after the subcommand too; SUPPRESS keeps a value
    # given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts",
    )
    return common


_COMMON = _common()


def _add(
    sub: Any, name: str, command: Command, help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, parents=[_COMMON]
    )
    parser.set_defaults(command=command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of nexusctl."""
    parser = argparse.ArgumentParser(
        prog="nexusctl",
        description="Manage nexusd: containers in NixOS qubes, their links,"
        " NixOS templates and qubes.",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON for scripts"
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="topic", metavar="COMMAND")
    sub.required = True

    _add(sub, "status", views.status, "show nexusd's state")
    _add(sub, "qubes", views.qubes, "list the qubes nexusd knows of")
    p = _add(sub, "containers", views.containers, "list containers")
    p.add_argument("qube", nargs="?", default="", metavar="QUBE")
    _add(sub, "links", views.links, "list links between containers")
    _add(sub, "jobs", views.jobs, "list running and recent jobs")
    p = _add(sub, "job", _no_action, "steer jobs")
    jsub = p.add_subparsers(dest="action", metavar="ACTION")
    jsub.required = True
    p = _add(jsub, "cancel", views.job_cancel, "cancel a running job")
    p.add_argument("job", metavar="JOB")

    p = _add(sub, "container", _no_action, "change containers")
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    p = _add(csub, "remove", views.container_remove, "remove a container")
    p.add_argument("qube", metavar="QUBE")
    p.add_argument("name", metavar="NAME")

    p = _add(sub, "link", _no_action, "change links")
    lsub = p.add_subparsers(dest="action", metavar="ACTION")
    lsub.required = True
    p = _add(lsub, "remove", views.link_remove, "remove a link")
    p.add_argument("link_id", metavar="ID")

    p = _add(sub, "policy", _no_action, "explain and check qrexec policy")
    psub = p.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    p = _add(psub, "explain", views.policy_explain, "explain a decision")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("service", metavar="SERVICE[+ARG]")
    _add(psub, "check", views.policy_check, "list policy problems")

    p = _add(sub, "log", views.audit_log, "show the audit trail")
    p.add_argument("--qube", default="", metavar="QUBE")
    p.add_argument("--limit", type=_count(AUDIT_MAX), default=0, metavar="N")

    _add_job_commands(sub)

    p = _add(sub, "completion", _completion, "print a shell completion")
    p.add_argument("shell", choices=["bash"])
    return parser


def _add_job_commands(sub: Any) -> None:
    p = _add(sub, "template", _no_action, "NixOS templates")
    tsub = p.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    p = _add(tsub, "import", _template_import, "import a NixOS root image")
    p.add_argument("name", metavar="NAME")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--sha256", metavar="HEX", help="refuse another image")
    p.add_argument("--kernel", metavar="KERNEL")
    p.add_argument("--virt-mode", dest="virt_mode", metavar="MODE")

    p = _add(sub, "qube", _no_action, "NixOS qubes")
    qsub = p.add_subparsers(dest="action", metavar="ACTION")
    qsub.required = True
    p = _add(qsub, "create", _qube_create, "create a NixOS qube")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--template", required=True, metavar="TEMPLATE")
    p.add_argument("--label", required=True, metavar="LABEL")
    p.add_argument("--netvm", metavar="NETVM")
    p.add_argument(
        "--class",
        dest="klass",
        choices=["AppVM", "DispVM-template", "StandaloneVM"],
        default="AppVM",
    )
    p.add_argument(
        "--max-containers",
        dest="max_containers",
        type=_count(QUOTA_MAX),
        metavar="N",
    )

    _add(sub, "apply", _apply, "make the qubes as declared")
    _add(sub, "diff", _diff, "show what apply would change")
    _add(sub, "audit", _audit, "list qubes not based on NixOS")


def _count(most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or int(text) > most:
            msg = f"must be a whole number from 0 to {most}"
            raise argparse.ArgumentTypeError(msg)
        return int(text)

    return parse


def _no_action(args: argparse.Namespace, client: NexusClient) -> int:
    return EXIT_USAGE


def _completion(args: argparse.Namespace, client: NexusClient) -> int:
    sys.stdout.write(bash_completion(build_parser()))
    return EXIT_OK


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _run_job(
    args: argparse.Namespace,
    client: NexusClient,
    method: str,
    options: dict[str, Any],
    fd: int | None = None,
) -> int:
    bar = ProgressBar(method)
    started: list[str] = []
    try:
        end = client.run_job(
            method,
            options,
            fd=fd,
            on_progress=bar.update,
            on_started=started.append,
        )
    except KeyboardInterrupt:
        bar.close()
        if started:
            client.cancel_job(started[0])
            sys.stderr.write(f"nexusctl: {method}: cancelled {started[0]}\n")
        raise
    finally:
        bar.close()
    if args.json:
        print_json(
            {
                "job": end.job,
                "state": end.state,
                "result": end.result,
                "error": {"code": end.error_code, "message": end.error_message}
                if end.error_code
                else None,
            }
        )
    elif end.state == "done":
        views.print_result(end.result)
    if end.state != "done":
        reason = end.error_message or end.state
        code = end.error_code or end.state
        sys.stderr.write(f"nexusctl: {method}: {clean(reason)} [{code}]\n")
        return EXIT_FAILED
    return EXIT_OK


def _template_import(args: argparse.Namespace, client: NexusClient) -> int:
    try:
        fd = open_image(args.image)
    except OSError as err:
        sys.stderr.write(f"nexusctl: {args.image}: {err.strerror}\n")
        return EXIT_FAILED
    try:
        options = _options(args, "name", "sha256", "kernel", "virt_mode")
        return _run_job(args, client, "ImportTemplate", options, fd)
    finally:
        os.close(fd)


def _qube_create(args: argparse.Namespace, client: NexusClient) -> int:
    options = _options(args, "name", "template", "label", "netvm")
    options["class"] = args.klass
    if args.max_containers is not None:
        options["max_containers"] = args.max_containers
    return _run_job(args, client, "CreateQube", options)


def _apply(args: argparse.Namespace, client: NexusClient) -> int:
    return _run_job(args, client, "Apply", {})


def _diff(args: argparse.Namespace, client: NexusClient) -> int:
    return _run_job(args, client, "Diff", {})


def _audit(args: argparse.Namespace, client: NexusClient) -> int:
    return _run_job(args, client, "AuditQubes", {})


def main(
    argv: list[str] | None = None, *, client: NexusClient | None = None
) -> int:
    """Run nexusctl with *argv*; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code == 0 else EXIT_USAGE
    if client is None:
        client = NexusClient(bus_address())
    try:
        return int(args.command(args, client))
    except ClientError as err:
        sys.stderr.write(f"nexusctl: {clean(err.message)} [{err.code}]\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("nexusctl: interrupted\n")
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
